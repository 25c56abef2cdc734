"""A small typed client for the provisiond REST API, used by the CLI and by scripts.

    from provisiond.client import Client
    with Client("http://127.0.0.1:8080", token) as api:
        for m in api.get("/machines"):
            print(m["name"], m["state"])

Errors come back as :class:`ApiError` with the server's code, message and hint.

Allocations (machines for CI) have their own helpers; the :class:`Allocation`
returned releases the machine when its ``with`` block ends::

    with Client().allocate(image="debian-12", tags=["ci"], ssh_keys=["~/.ssh/id.pub"],
                           lease="2h") as machine:
        print(machine.address, machine.ssh_user, machine.host_key_fingerprint)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

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
        timeout: float | None = None,
    ) -> Any:
        """One call; ``timeout`` overrides the client's (for long-polls)."""
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
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


class AllocationFailed(Exception):
    """The allocation ended without a ready machine (``failed``, ``expired``, ``released``)."""

    def __init__(self, allocation: Allocation, message: str) -> None:
        super().__init__(message)
        self.allocation = allocation


class AllocationTimeout(AllocationFailed):
    """It was not ready within the time given; it has been released."""


#: States after which an allocation never changes again.
FINAL_STATES = frozenset({"failed", "released", "expired"})
#: The longest single long-poll the client asks for (the server allows 300 s).
POLL_S = 60.0


class Allocation:
    """A machine lent to you. Use it as a context manager to release it on the way out::

    with Client().allocate(image="debian-12", tags=["ci"], ssh_keys=[key]) as m:
        subprocess.run(["ssh", f"{m.ssh_user}@{m.address}", "make", "test"], check=True)
    """

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    def __repr__(self) -> str:
        return f"Allocation(id={self.id!r}, state={self.state!r}, machine={self.machine!r})"

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def state(self) -> str:
        """pending | deploying | ready | failed | released | expired"""
        return str(self.data["state"])

    @property
    def machine(self) -> str | None:
        return self._opt("machine")

    @property
    def address(self) -> str | None:
        """Where to SSH to, once ready."""
        return self._opt("address")

    @property
    def ssh_user(self) -> str:
        return str(self.data.get("ssh_user") or "root")

    @property
    def host_key(self) -> str | None:
        """The machine's SSH host key line, for known_hosts."""
        return self._opt("host_key")

    @property
    def host_key_fingerprint(self) -> str | None:
        return self._opt("host_key_fingerprint")

    @property
    def expires_at(self) -> str | None:
        return self._opt("expires_at")

    @property
    def failure_reason(self) -> str:
        return str(self.data.get("failure_reason") or "")

    def _opt(self, key: str) -> str | None:
        value = self.data.get(key)
        return None if value is None else str(value)

    @property
    def _path(self) -> str:
        return f"/allocations/{quote(self.id, safe='')}"

    def refresh(self) -> Allocation:
        self.data = self._client.get(self._path)
        return self

    def wait(
        self,
        *,
        timeout: float = 1800.0,
        on_change: Callable[[Allocation], None] | None = None,
    ) -> Allocation:
        """Block (long-polling, no busy loop) until ready; see :meth:`Client.allocate`."""
        deadline = time.monotonic() + timeout
        try:
            while self.state != "ready":
                if self.state in FINAL_STATES:
                    raise AllocationFailed(
                        self, f"allocation {self.id} is {self.state}: {self.failure_reason}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AllocationTimeout(
                        self, f"allocation {self.id} not ready after {timeout:.0f}s ({self.state})"
                    )
                before = self.state
                self._poll(min(POLL_S, remaining), before)
                if on_change is not None and self.state != before:
                    on_change(self)
        except AllocationTimeout:
            self._release_quietly()
            raise
        except AllocationFailed:
            raise
        except BaseException:
            self._release_quietly()
            raise
        return self

    def _poll(self, wait: float, since_state: str) -> None:
        params = {"wait": f"{wait:.1f}", "since_state": since_state}
        try:
            self.data = self._client.request("GET", self._path, params=params, timeout=wait + 30)
        except ApiError as exc:
            if exc.status != 0 and exc.status < 500:
                raise
            time.sleep(min(2.0, wait))  # daemon restarting or unreachable: try again

    def renew(self, lease: int | str) -> Allocation:
        self.data = self._client.post(self._path + "/renew", {"lease": lease})
        return self

    def release(self) -> Allocation:
        self.data = self._client.delete(self._path)
        return self

    def _release_quietly(self) -> None:
        with contextlib.suppress(ApiError):
            self.release()

    def __enter__(self) -> Allocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state not in FINAL_STATES:
            self.release()
