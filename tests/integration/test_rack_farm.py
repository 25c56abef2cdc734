"""The virtual rack's farm body without QEMU: BMCs and the rack's PDU on one loop.

:func:`run_rack_farm` is what ``provisiond rack up``'s farm process runs, with QEMU
guests; here it runs on a thread with in-memory machines, over real UDP on
127.0.0.1: the apc_snmp driver switches an outlet, ipmitool asks the BMCs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisiond.drivers.pdu.apc_snmp import ApcSnmpPdu
from provisiond.drivers.pdu.base import (
    OutletState,
    PduAuthError,
    PduReading,
    PduTarget,
    PduUnreachable,
)
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.rack.ipmi_machine import BootDevice, InMemoryMachine
from provisiond.rack.rack_farm import run_rack_farm
from tests.support.netns import require

PASSWORD = "farm-secret"


class Farm:
    def __init__(self, ready: dict[str, int], machines: list[InMemoryMachine], community: str):
        self.pid, self.base_port, self.pdu_port = (
            ready["pid"],
            ready["base_port"],
            ready["pdu_port"],
        )
        self.machines = machines
        self.community = community

    def pdu(self, community: str | None = None, retries: int = 1) -> PduTarget:
        return PduTarget(
            "rack-pdu1", "127.0.0.1", self.pdu_port, community=community or self.community,
            timeout=1.0, retries=retries,
        )  # fmt: skip


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    machines = [InMemoryMachine() for _ in range(3)]
    community = secrets.token_urlsafe(12)
    ready_file = tmp_path / "bmc.ready"
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_rack_farm(
                machines, base_port=0, username="admin", password=PASSWORD, pdu_name="rack-pdu1",
                community=community, ready_file=ready_file, stop=stop, log=lambda _line: None,
            )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="rack-farm", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists() and not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not errors, errors
        yield Farm(json.loads(ready_file.read_text()), machines, community)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive() and not errors


def ipmi(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", "admin",
           "-P", PASSWORD, "-C", "3", "-N", "1", "-R", "1", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def drive(target: PduTarget, coro: str, *args: object) -> object:
    async def main() -> object:
        client = await SnmpClient.open()
        try:
            return await getattr(ApcSnmpPdu(target, client), coro)(*args)
        finally:
            client.close()

    return asyncio.run(main())


def test_ready_file_names_the_bmc_and_pdu_ports(farm: Farm) -> None:
    assert (
        farm.pdu_port > 0
        and farm.base_port > 0
        and farm.pdu_port not in range(farm.base_port, farm.base_port + 3)
    )
    assert drive(farm.pdu(), "outlet_state", 3) == OutletState.ON


def test_outlet_off_silences_the_right_bmc_and_cuts_its_machine(farm: Farm) -> None:
    require("ipmitool")
    for machine in farm.machines:
        machine.power_on(BootDevice())
    assert "Chassis Power is on" in ipmi(farm.base_port + 1, "power", "status").stdout

    assert drive(farm.pdu(), "set_outlet", 2, False) is True  # outlet 2 feeds machine 2
    assert [m.is_on() for m in farm.machines] == [True, False, True]
    dark = ipmi(farm.base_port + 1, "power", "status")
    assert dark.returncode != 0, dark.stdout
    assert "Chassis Power is on" in ipmi(farm.base_port, "power", "status").stdout
    assert "Chassis Power is on" in ipmi(farm.base_port + 2, "power", "status").stdout
    reading = drive(farm.pdu(), "read_power", [1, 2, 3])
    assert isinstance(reading, PduReading)
    assert reading.outlet_watts == {1: 120, 2: 0, 3: 120} and reading.total_watts == 240

    assert drive(farm.pdu(), "set_outlet", 2, True) is True
    deadline = time.monotonic() + 10  # the BMC boots (~0.5 s), then answers again
    while time.monotonic() < deadline:
        back = ipmi(farm.base_port + 1, "power", "status")
        if back.returncode == 0:
            break
    assert "Chassis Power is on" in back.stdout  # restore policy "last": it was on


def test_a_wrong_community_gets_no_answer(farm: Farm) -> None:
    with pytest.raises((PduAuthError, PduUnreachable)):
        drive(farm.pdu("not-the-community", retries=0), "outlet_state", 1)
