"""An allocation as the API client sees it: a machine lent to you, released on the way
out of its ``with`` block (see :meth:`provisiond.client.Client.allocate`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from provisiond.client_errors import ApiError

if TYPE_CHECKING:
    from provisiond.client import Client


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
