"""A machine that boots from its second NIC, end to end on a QEMU virtual rack (TCG).

The report (issue 12, item 7): a server with two NICs, only the second cabled to the
provisioning network, PXE-booted fine but was enrolled under its first MAC (the
entry script chained to ``${net0/mac}``), so the daemon never learnt its address,
refused its seed and left it ``inspecting`` until the deadline.

The guest here is that server: SeaBIOS runs the first NIC's iPXE, whose DHCP times
out (nothing is on its hub), then the second's. The daemon knows neither MAC, as in
the report: the rack's planned entry for it is deleted first, so the machine enrolls
itself by its PXE boot ("discovered via PXE"), which is where the NIC that booted
decides everything. It must be enrolled under the cabled MAC, inspected with both
NICs recorded, get its BMC from an operator, be deployed with the live image and
answer SSH with the allocation's key, its lease on the cabled NIC (BOOTIF told the
ramdisk which NIC to bring up; the uncabled one is never tried).

One guest, BIOS (under OVMF each NIC's iPXE drives only its own NIC, so ``net0``
was already right there; tests/integration/test_vrack.py covers OVMF's boot order).
The rack and the daemon are torn down in the fixture's ``finally``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisiond.rack.scenario import Scenario
from tests.support import e2e

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and taps need root"),
    pytest.mark.timeout(480),
]

CONFIG = """\
reaper_interval_s = 2
[timeouts]
inspecting = 180
deploying = 120
installing_agent = 120
releasing = 120
"""


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("two-nics")
    sc = Scenario(
        f"nic{os.getpid() % 10000}",
        1,
        workdir,
        subnet="10.216.0.0/24",
        ipv6_prefix="fd00:216::/64",
        extra_config=CONFIG,
        log=lambda line: print(line, flush=True),
        two_nics=1,
    )
    with e2e.brought_up(sc):
        yield sc


def _phases(record: dict[str, Any]) -> dict[str, float]:
    return {p["phase"]: p["seconds"] for p in record["phases"]}


def test_a_machine_that_boots_from_its_second_nic(rack: Scenario) -> None:
    assert rack.rack is not None
    guest = rack.rack.guests[0]
    cabled, uncabled = guest.mac, guest.unwired_mac
    assert uncabled and guest.firmware == "bios"
    started = time.monotonic()
    try:
        # The daemon forgets the machine: an unknown box that someone switched on.
        with rack.api() as api:
            assert api.post("/machines/vm1/events", json={"event": "retire"}).status_code == 200
            assert api.delete("/machines/vm1").status_code == 204
        ipmi = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p",
                str(guest.bmc_port), "-U", rack.rack.bmc_username,
                "-P", rack.bmc_password]  # fmt: skip
        for command in (["chassis", "bootdev", "pxe"], ["chassis", "power", "on"]):
            done = subprocess.run([*ipmi, *command], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr

        # Enrolled under the NIC that booted, inspected, with both NICs recorded.
        name = "pxe-" + cabled.replace(":", "")
        found = rack.wait_states([name], {"available"}, timeout=180, fail={"inspect_failed"})
        machine = found[name]
        inspected = time.monotonic() - started
        names = [m["name"] for m in rack.machines()]
        assert names == [name], names  # nothing enrolled under the uncabled MAC
        nics = {n["mac"]: n for n in machine["nics"]}
        assert set(nics) == {cabled, uncabled}, machine["nics"]
        assert (nics[cabled]["name"], nics[cabled]["pxe"]) == ("eth1", True)
        assert nics[cabled]["ip_address"].startswith("10.216.0.")
        assert (nics[uncabled]["name"], nics[uncabled]["pxe"], nics[uncabled]["ip_address"]) == (
            "eth0",
            False,
            "",
        )
        with rack.api() as api:
            assert api.get("/events", params={"event": "mac_mismatch"}).json() == []
            [learnt] = api.get("/events", params={"machine": name, "event": "nics_recorded"}).json()
        assert [n["mac"] for n in learnt["details"]["added"]] == [uncabled]
        inspect_phases = _phases(rack.deployments(name)[0])

        # An operator gives it its BMC; then a deploy goes the normal way.
        bmc = {"driver": "ipmi", "address": guest.bmc_address, "port": guest.bmc_port,
               "username": rack.rack.bmc_username, "password": rack.bmc_password}  # fmt: skip
        with rack.api() as api:
            r = api.patch(f"/machines/{name}", json={"bmc": bmc})
            assert r.status_code == 200, r.text
        pem, pub = e2e.keypair("two-nics@test")
        deploy_started = time.monotonic()
        [alloc] = rack.wait_allocations(rack.allocate([name], [pub]), timeout=240)
        deployed = time.monotonic() - deploy_started
        assert alloc["state"] == "ready", alloc
        record = rack.deployments(name)[0]
        assert (record["kind"], record["outcome"]) == ("deploy", "active")

        out = e2e.ssh(
            rack,
            alloc["address"],
            pem,
            alloc["host_key"],
            "cat /sys/class/net/eth0/address /sys/class/net/eth1/address; "
            "ip -4 -o addr show dev eth0 | wc -l; ip -4 -o addr show dev eth1; "
            "tr ' ' '\\n' </proc/cmdline | grep ^BOOTIF=",
        )
        lines = out.splitlines()
        assert lines[:3] == [uncabled, cabled, "0"], out
        assert f" {alloc['address']}/" in lines[3], out  # the lease is on the cabled NIC
        assert lines[4] == "BOOTIF=01-" + cabled.replace(":", "-"), out
    except Exception as exc:
        pytest.fail(f"{exc!r}\n{e2e.diagnose(rack, tail=3000)}")
    serial = Path(guest.serial_log).read_text(errors="replace")
    # Both boots (inspection, deploy): iPXE gave up on net0, booted from net1; the
    # ramdisk brought up eth1 at once and never tried the uncabled eth0.
    assert serial.count(f"net1: {cabled} using virtio-net") == 2, serial[-3000:]
    assert serial.count(f"BOOTIF {cabled}: eth1") == 2, serial[-3000:]
    assert "DHCP on eth0" not in serial
    deploy_phases = _phases(record)
    print(
        f"two-NIC guest: available {inspected:.1f}s after power-on "
        f"(phases {inspect_phases}); deployed in {deployed:.1f}s (phases {deploy_phases})"
    )
