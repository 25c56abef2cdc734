"""Long-lived power drivers, one per BMC endpoint and credentials.

pyghmi sessions are expensive to open (four RMCP+ round trips) and must not be
logged out and reopened (a pyghmi 1.6.19 defect), so drivers are kept and reused
for as long as the BMC's settings do not change.
"""

from __future__ import annotations

import hashlib

from provisiond.drivers.power.base import BmcTarget, PowerDriver
from provisiond.drivers.power.registry import make_driver


def _fingerprint(driver: str, target: BmcTarget) -> str:
    raw = "\0".join(
        [driver, target.address, str(target.port), target.username, target.password]
        + [f"{k}={v}" for k, v in sorted(target.options.items())]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


class DriverPool:
    def __init__(self) -> None:
        self._drivers: dict[tuple[str, int], tuple[str, PowerDriver]] = {}

    def get(self, driver: str, target: BmcTarget) -> PowerDriver:
        key = (target.address, target.port)
        fingerprint = _fingerprint(driver, target)
        cached = self._drivers.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        if cached is not None:
            cached[1].close()
        instance = make_driver(driver, target)
        self._drivers[key] = (fingerprint, instance)
        return instance

    def __len__(self) -> int:
        return len(self._drivers)

    def close(self) -> None:
        for _, driver in self._drivers.values():
            driver.close()
        self._drivers.clear()
