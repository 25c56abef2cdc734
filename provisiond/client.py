"""A small typed client for the provisiond REST API, used by the CLI and by scripts.

    from provisiond.client import Client
    with Client("http://127.0.0.1:8080", token) as api:
        for m in api.machines(state="available"):
            print(m["name"], m["state"])

Lists that come in pages (``GET /machines``) are read with :meth:`Client.paginate`, which
follows the ``Link: rel="next"`` cursors; ``api.get("/machines")`` alone is the first page.

Errors come back as :class:`ApiError` with the server's code, message and hint.

Allocations (machines for CI) have their own helpers; the :class:`Allocation`
returned releases the machine when its ``with`` block ends::

    with Client().allocate(image="debian-12", tags=["ci"], ssh_keys=["~/.ssh/id.pub"],
                           lease="2h") as machine:
        print(machine.address, machine.ssh_user, machine.host_key_fingerprint)
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from provisiond.client_allocation import FINAL_STATES as FINAL_STATES
from provisiond.client_allocation import POLL_S as POLL_S
from provisiond.client_allocation import Allocation as Allocation
from provisiond.client_allocation import AllocationFailed as AllocationFailed
from provisiond.client_allocation import AllocationTimeout as AllocationTimeout
from provisiond.client_errors import ApiError as ApiError

DEFAULT_URL = "http://127.0.0.1:8080"
#: Items per page when following a paged list (the server allows 1 to 1000).
PAGE_SIZE = 500


def next_cursor(response: httpx.Response) -> str | None:
    """The ``cursor`` of the page after this one (its ``Link: <...>; rel="next"``), or
    None on the last page. Only the cursor is taken: the client keeps its own base URL."""
    url = response.links.get("next", {}).get("url")
    return httpx.URL(url).params.get("cursor") if url else None


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

    def _send(
        self, method: str, path: str, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        wait = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        try:
            response = self._http.request(method, path, timeout=wait, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            self._raise_for(response)
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: str | bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call; ``timeout`` overrides the client's (for long-polls)."""
        kwargs = {"json": json, "params": params, "content": content, "headers": headers}
        response = self._send(method, path, timeout, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def paginate(self, path: str, *, limit: int | None = None, **params: Any) -> Iterator[Any]:
        """Every item of a paged list (:data:`PAGE_SIZE` a page), following the
        ``Link: rel="next"`` cursors; at most ``limit`` items when given."""
        query = {k: v for k, v in params.items() if v is not None}
        left = limit
        while left is None or left > 0:
            size = PAGE_SIZE if left is None else min(PAGE_SIZE, left)
            response = self._send("GET", path, params={**query, "limit": size})
            items = response.json()
            yield from items
            left = None if left is None else left - len(items)
            query["cursor"] = next_cursor(response)
            if query["cursor"] is None:
                return

    def machines(self, *, limit: int | None = None, **filters: str | None) -> list[Any]:
        """Machines by name, all or the first ``limit``; filters: state, rack, tag, arch."""
        return list(self.paginate("/machines", limit=limit, **filters))

    def export_machines(self, **filters: str | None) -> Iterator[dict[str, Any]]:
        """Every matching machine from one streamed answer (NDJSON), as it arrives."""
        params = {"stream": "true", **{k: v for k, v in filters.items() if v is not None}}
        for line in self.stream_lines("GET", "/machines", params=params):
            item: dict[str, Any] = jsonlib.loads(line)
            if "error" in item and "uuid" not in item:  # the stream broke after its headers
                err = item["error"]
                raise ApiError(200, err["code"], err["message"], err.get("hint", ""))
            yield item

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

    # --- allocations -----------------------------------------------------------

    def allocate(
        self,
        *,
        image: str,
        ssh_keys: Sequence[str | os.PathLike[str]],
        arch: str | None = None,
        min_cpus: int | None = None,
        min_ram_mib: int | None = None,
        min_disk_gb: int | None = None,
        tags: Sequence[str] = (),
        rack: str | None = None,
        site: str | None = None,
        names: Sequence[str] = (),
        user_data: str = "",
        lease: int | str = "1h",
        ssh_user: str = "root",
        root_device: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
        timeout: float = 1800.0,
        on_change: Callable[[Allocation], None] | None = None,
    ) -> Allocation:
        """Ask for a machine; with ``wait`` (the default) return once it is ready.

        ``ssh_keys`` are public key lines or paths to ``.pub`` files. ``lease`` is
        seconds or a duration (``"2h"``). ``root_device``: root-device hints for a
        disk image (``{"size": ">= 100", "rotational": False}``).
        Waiting raises :class:`AllocationFailed`
        if the deploy failed on every machine tried, and :class:`AllocationTimeout`
        after ``timeout`` seconds; on a timeout or an interrupt the request is
        released first, so a dying CI job does not keep a machine.
        """
        constraints = {
            "arch": arch,
            "min_cpus": min_cpus,
            "min_ram_mib": min_ram_mib,
            "min_disk_gb": min_disk_gb,
            "tags": list(tags),
            "rack": rack,
            "site": site,
            "names": list(names),
        }
        body = {
            "image": image,
            "ssh_keys": [_read_key(k) for k in ssh_keys],
            "user_data": user_data,
            "lease": lease,
            "ssh_user": ssh_user,
            "constraints": {k: v for k, v in constraints.items() if v not in (None, [])},
            **({"root_device": dict(root_device)} if root_device else {}),
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        allocation = Allocation(
            self, self.request("POST", "/allocations", json=body, headers=headers)
        )
        if on_change is not None:
            on_change(allocation)
        if wait:
            allocation.wait(timeout=timeout, on_change=on_change)
        return allocation

    def get_allocation(self, allocation_id: str) -> Allocation:
        return Allocation(self, self.get(f"/allocations/{quote(allocation_id, safe='')}"))

    def allocations(self, state: str | None = None) -> list[Allocation]:
        return [Allocation(self, a) for a in self.get("/allocations", state=state)]

    def release(self, allocation_id: str) -> Allocation:
        """Hand the machine back (wiped, then available to others). Repeating it is harmless."""
        return Allocation(self, self.delete(f"/allocations/{quote(allocation_id, safe='')}"))


def _read_key(key: str | os.PathLike[str]) -> str:
    if isinstance(key, str) and key.split(None, 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
        return key.strip()
    path = Path(key).expanduser()
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ApiError(
            0, "bad_ssh_key", f"cannot read SSH public key {path}: {exc.strerror}",
            "pass the key line itself or the path of a .pub file",
        ) from None  # fmt: skip
