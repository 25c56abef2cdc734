"""Long-lived power drivers, one per BMC endpoint and credentials, shared by all threads.

pyghmi sessions are expensive to open (four RMCP+ round trips) and must not be
logged out and reopened (a pyghmi 1.6.19 defect), so drivers are kept and reused
for as long as the BMC's settings do not change.

The pool is called from the event loop and from many worker threads at once. One
lock guards the table; it is held for dictionary work only, because :meth:`get`
does no I/O: a driver logs in on its first call, under its own lock, so a slow
BMC delays only the threads that talk to it. When a BMC's settings change, the
old driver is closed outside the lock, and :meth:`PowerDriver.close` waits for
calls other threads still have in flight with it before it drops the session.
"""

from __future__ import annotations

import hashlib
import threading

from provisiond.drivers.power.base import BmcTarget, PowerDriver
from provisiond.drivers.power.registry import driver_class, make_driver


def _fingerprint(driver: str, target: BmcTarget) -> str:
    # Only the options the driver declares: pyghmi shares one IPMI session between
    # clients with equal credentials, so replacing an ipmi driver over a setting it
    # never reads (say tls_verify) would retire a session its successor shares.
    declared = {setting.name for setting in driver_class(driver).settings}
    raw = "\0".join(
        [driver, target.address, str(target.port), target.username, target.password]
        + [f"{k}={v}" for k, v in sorted(target.options.items()) if k in declared]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


class DriverPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drivers: dict[tuple[str, int], tuple[str, PowerDriver]] = {}

    def get(self, driver: str, target: BmcTarget) -> PowerDriver:
        key = (target.address, target.port)
        fingerprint = _fingerprint(driver, target)
        with self._lock:
            cached = self._drivers.get(key)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            instance = make_driver(driver, target)
            self._drivers[key] = (fingerprint, instance)
        if cached is not None:
            cached[1].close()
        return instance

    def __len__(self) -> int:
        with self._lock:
            return len(self._drivers)

    def close(self) -> None:
        with self._lock:
            drivers = [driver for _, driver in self._drivers.values()]
            self._drivers.clear()
        for driver in drivers:
            driver.close()
