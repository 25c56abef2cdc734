"""A small typed client for the provisiond REST API, used by the CLI and by scripts.

    from provisiond.client import Client
    with Client("http://127.0.0.1:8080", token) as api:
        for m in api.get("/machines"):
            print(m["name"], m["state"])

Errors come back as :class:`ApiError` with the server's code, message and hint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """An error answer from the API (or ``status`` 0 when it could not be reached).

    ``problems`` lists offending entries for validation errors: dicts with
    ``path``, ``line`` (for YAML input) and ``message``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.problems = problems or []


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0
    ) -> None:
        self.url = (url or os.environ.get("PROVISIOND_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("PROVISIOND_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(
            0,
            "unreachable",
            f"cannot reach provisiond at {self.url}: {exc}",
            "check PROVISIOND_URL and that 'provisiond serve' is running",
        )

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        try:
            err = response.json()["error"]
            problems = err.get("problems")
            raise ApiError(
                response.status_code, err["code"], err["message"], err.get("hint", ""), problems
            )
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                response.status_code, "http_error", response.text[:200] or response.reason_phrase
            ) from None

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, path, json=json, params=params, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            self._raise_for(response)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def stream_lines(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Iterator[str]:
        """Yield the lines of a streamed (NDJSON) answer as they arrive."""
        try:
            with self._http.stream(method, path, json=json, params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp)
                yield from (line for line in resp.iter_lines() if line.strip())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
