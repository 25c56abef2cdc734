"""The in-process layer of a DHCP holder's safety: a thread that kills dnsmasq at a deadline.

It does not depend on the event loop: a daemon whose loop hangs still stops its
dnsmasq when its DHCP role runs out (the guard process, provisiond.netboot.dhcp_guard,
is the layer that also survives a SIGSTOP or SIGKILL of the daemon).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

from provisiond.logging import get_logger
from provisiond.netboot.dhcp_guard import gone

log = get_logger(__name__)

KILL_WAIT_S = 2.0


def kill_pid(pid: int, wait_s: float = KILL_WAIT_S) -> bool:
    """SIGTERM, then SIGKILL after ``wait_s``: True once it is gone (or a zombie)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:  # bounded: wait_s
            if gone(pid):
                return True
            time.sleep(0.02)
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return gone(pid)


class DeadMan:
    """A thread that kills a process when a monotonic deadline passes unrenewed."""

    def __init__(self, name: str, pid: Callable[[], int | None], on_fire: Callable[[], None]):
        self.name = name
        self._pid = pid
        self._on_fire = on_fire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        self.fired = 0
        self._thread = threading.Thread(target=self._run, name=f"deadman-{name}", daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> None:
        with self._cond:
            self._deadline = deadline
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(KILL_WAIT_S * 2 + 1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._deadline is None:
                        self._cond.wait()
                        continue
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)  # monotonic: fires at once after a SIGCONT
                if self._closed:
                    return
                self._deadline = None
            self._fire()

    def _fire(self) -> None:
        self.fired += 1
        pid = self._pid()
        log.warning(
            "dhcp_deadman_fired",
            network=self.name,
            pid=pid,
            hint="the DHCP role could not be renewed before its expiry: this daemon's "
            "dnsmasq is stopped so that the daemon taking over is the only DHCP server",
        )
        if pid is not None:
            kill_pid(pid)
        try:
            self._on_fire()
        except Exception:
            log.exception("dhcp_deadman_callback_failed", network=self.name)
