"""A sweep's logins: bounded by discovery_login_concurrency, on threads of the sweep's own.

Against the repo's simulated BMCs (provisiond.rack.BmcFarm) on loopback. A sweep used
to log in through the daemon executor, as wide as power sync, so it held every
thread power sync and power actions needed for as long as its logins ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from provisiond.container import Services
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.executor import BlockingExecutor
from provisiond.machines import discovery, power_sync
from provisiond.models import CredentialSet
from provisiond.rack import BmcFarm


@pytest.fixture(autouse=True)
def _sweep_settings(services: Services) -> None:
    services.settings.discovery_probe_timeout_s = 0.3  # empty ports never answer
    with services.db.transaction() as session:
        session.add(
            CredentialSet(
                name="sim",
                username="admin",
                secret_encrypted=services.secrets.encrypt("password"),
            )
        )


def _plan(services: Services, farm: BmcFarm) -> discovery.Sweep:
    last = farm.base_port + len(farm) - 1
    return discovery.prepare(services, ["127.0.0.1/32"], f"{farm.base_port}-{last}")


class _InFlight:
    """Counts the BMC calls running at once, and the threads that make them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.threads: set[str] = set()

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(driver: IpmiPower, *args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.threads.add(threading.current_thread().name)
            try:
                return method(driver, *args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1

        return counted


def test_logins_in_flight_never_exceed_the_bound(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.settings.discovery_login_concurrency = 4
    calls = _InFlight()
    monkeypatch.setattr(IpmiPower, "get_power", calls.wrap(IpmiPower.get_power))
    monkeypatch.setattr(IpmiPower, "read_identity", calls.wrap(IpmiPower.read_identity))
    daemon_calls: list[str] = []
    shared_run = services.executor.run

    async def spy(*args: Any, **kwargs: Any) -> Any:
        daemon_calls.append(str(kwargs.get("what", "")))
        return await shared_run(*args, **kwargs)

    monkeypatch.setattr(services.executor, "run", spy)
    with BmcFarm(count=24, latency_ms=5) as farm:
        plan = _plan(services, farm)
        result = asyncio.run(asyncio.wait_for(discovery.discover(services, plan), 90))
    assert len(result.enrolled) == 24 and result.failed == [], result.failed
    assert 2 <= calls.most <= 4, calls.most  # concurrent, and never past the bound
    assert len(calls.threads) <= 4
    assert all(name.startswith("discovery") for name in calls.threads), calls.threads
    assert daemon_calls == []  # not one call took a thread of the daemon executor


def test_power_sync_gets_through_while_a_sweep_logs_in(services: Services) -> None:
    """A narrow daemon executor (4 threads) and a slow sweep (80 BMCs at 40 ms a reply,
    8 at once): power sync's reads of the known machines still finish in well under a
    second or two each, while the sweep is still logging in. Before, the sweep's 64
    logins queued ahead of them on those 4 threads (seconds per read)."""
    services.executor.shutdown()
    services.executor = BlockingExecutor(4)
    services.settings.discovery_login_concurrency = 8
    services.settings.power_call_timeout_s = 5

    async def main(
        known: discovery.Sweep, slow: discovery.Sweep
    ) -> tuple[list[float], float, Any, Any]:
        first = await discovery.discover(services, known)
        assert len(first.enrolled) == 3, first.failed
        logging_in = asyncio.Event()
        logins_done = 0.0

        def progress(event: dict[str, Any]) -> None:
            nonlocal logins_done
            if event["phase"] == "probed":
                logging_in.set()
            if event["phase"] == "login" and event["done"] == event["total"]:
                logins_done = time.monotonic()

        sweep = asyncio.create_task(discovery.discover(services, slow, progress=progress))
        await asyncio.wait_for(logging_in.wait(), 30)
        await asyncio.sleep(0.5)  # the sweep's first logins are in flight
        seconds: list[float] = []
        reports = []
        for _ in range(3):
            started = time.monotonic()
            reports.append(await asyncio.wait_for(power_sync.sync_power(services), 30))
            seconds.append(time.monotonic() - started)
        synced = time.monotonic()
        result = await asyncio.wait_for(sweep, 120)
        assert logins_done > synced, "the sweep ended before power sync ran beside it"
        return seconds, logins_done - synced, reports, result

    with BmcFarm(count=3) as known, BmcFarm(count=80, latency_ms=40) as slow:
        plans = _plan(services, known), _plan(services, slow)  # (reads the DB)
        seconds, margin, reports, result = asyncio.run(main(*plans))
    print(f"power sync beside the sweep: {[round(x, 3) for x in seconds]} s each")
    assert all(r.read == 3 and r.failed == {} for r in reports), reports
    assert max(seconds) < 2.5, (seconds, margin)
    assert len(result.enrolled) == 80 and result.failed == [], result.failed


def test_logins_start_while_the_probe_still_waits(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each responder's login starts at its first probe reply, not after the probe's
    wait for the empty ports (here 2 rounds x 1 s)."""
    services.settings.discovery_probe_timeout_s = 1.0
    logins: list[float] = []
    read_power = IpmiPower.get_power

    def noted(driver: IpmiPower) -> Any:
        logins.append(time.monotonic())
        return read_power(driver)

    monkeypatch.setattr(IpmiPower, "get_power", noted)
    phases: list[tuple[str, float]] = []

    def progress(event: dict[str, Any]) -> None:
        phases.append((event["phase"], time.monotonic()))

    with BmcFarm(count=6) as farm:
        last = farm.base_port + 9  # 4 empty ports: the probe waits its full rounds
        plan = discovery.prepare(services, ["127.0.0.1/32"], f"{farm.base_port}-{last}")
        result = asyncio.run(
            asyncio.wait_for(discovery.discover(services, plan, progress=progress), 60)
        )
    assert len(result.enrolled) == 6 and result.responders == 6, result.failed
    probed = dict(phases)["probed"]
    assert len(logins) == 6 and max(logins) < probed, (logins, phases)
    names = [name for name, _ in phases]
    assert names[0] == "probe" and names[-1] == "done"
    assert names.count("login") == 1 and names.index("login") > names.index("probed")
