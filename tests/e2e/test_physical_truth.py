"""Physical truth on the virtual rack: cabling against LLDP, the outlet map, the budget.

Real parts only: QEMU guests booting the inspection ramdisk, whose agent captures the
LLDP frames of the rack's simulated switch on its NIC; the rack's PDU simulator over
SNMP (an outlet switched off kills that guest and silences its BMC); the simulated
BMCs' DCMI power readings; ``provisiond serve`` as a process. The rack has two faults
on purpose: the switch announces vm1's and vm2's ports crossed (``swap_cables``), and
the inventory maps vm1 and vm2 to each other's outlets (``pdu_miswire``). Under the
``hold`` policy the swap must hold both machines out of allocation, ``pdus verify``
must find the wrong map, and a small budget must refuse a power-on.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from provisiond.rack.scenario import DEPLOY_IMAGE, PROVISIOND, Scenario
from tests.support import e2e

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and taps need root"),
    pytest.mark.timeout(600),
]

CONFIG = """\
reaper_interval_s = 2
cabling_policy = "hold"
power_sync_interval_s = 3
[timeouts]
inspecting = 240
"""


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("ptrack")
    sc = Scenario(
        f"pt{os.getpid() % 10000}",
        2,
        workdir,
        subnet="10.217.0.0/24",
        ipv6_prefix="fd00:217::/64",
        extra_config=CONFIG,
        log=lambda _line: None,
        swap_cables=("vm1", "vm2"),
        pdu_miswire=("vm1", "vm2"),
    )
    with e2e.brought_up(sc):
        yield sc


def _run(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROVISIOND, *args], env=sc.env, capture_output=True, text=True, timeout=300, check=False
    )


def test_swapped_cables_fail_as_one_swap_and_hold_both(rack: Scenario) -> None:
    found = rack.discover()
    assert found["responders"] == 2 and not found["failed"], found
    try:
        rack.inspect_all(timeout=240)
    except Exception as exc:
        pytest.fail(f"{exc}\n{e2e.diagnose(rack)}")
    with rack.api() as api:
        report = api.get("/cabling").json()
    ports = {p["machine"]: p for p in report["ports"] if p["expected_port"]}
    assert set(ports) == {"vm1", "vm2"}, report
    for me, other, planned, seen in (
        ("vm1", "vm2", "swp1", "swp2"),
        ("vm2", "vm1", "swp2", "swp1"),
    ):
        port = ports[me]
        assert port["result"] == "fail", port
        assert (port["expected_port"], port["seen_port_id"]) == (planned, seen), port
        assert port["swapped_with"] and port["swapped_with"].startswith(other), port
        assert port["hold_reason"].startswith("cabling:"), port
        assert rack.machine(me)["hold_reason"] == port["hold_reason"]
    swaps = [f for f in report["findings"] if f["kind"] == "swap"]
    assert len(swaps) == 1, report["findings"]

    # The CLI prints the same per port and exits 1; allocation will not take a held machine.
    cli = _run(rack, "cabling", "check", "--json")
    assert cli.returncode == 1, cli.stderr
    assert {p["result"] for p in json.loads(cli.stdout)["ports"] if p["expected_port"]} == {"fail"}
    with rack.api() as api:
        refused = api.post(
            "/allocations",
            json={
                "constraints": {"names": ["vm1"]},
                "image": DEPLOY_IMAGE,
                "lease": "10m",
                "ssh_keys": [e2e.keypair()[1]],
            },
        )
    assert refused.status_code == 422, refused.text
    assert "held" in refused.text and "swapped with vm2" in refused.text, refused.text


def test_pdus_verify_finds_the_wrong_outlet_map(rack: Scenario) -> None:
    pdu = f"{rack.name}-pdu1"
    done = _run(rack, "pdus", "verify", pdu, "--json")
    assert done.returncode == 1, (done.stdout, done.stderr)
    verdicts = {v["machine"]: v for v in json.loads(done.stdout)}
    # The inventory says vm1 is on outlet 2 and vm2 on outlet 1; the wiring is straight.
    assert verdicts["vm1"]["result"] == "fail", verdicts
    assert verdicts["vm2"]["result"] == "fail", verdicts
    assert "cut vm2's BMC, expected vm1" in verdicts["vm1"]["detail"], verdicts
    assert "cut vm1's BMC, expected vm2" in verdicts["vm2"]["detail"], verdicts
    # Every BMC answers again afterwards: power works as before.
    for name in ("vm1", "vm2"):
        with rack.api() as api:
            assert api.get(f"/machines/{name}/power").status_code == 200


def _rack_power(sc: Scenario) -> dict[str, Any]:
    with sc.api() as api:
        r = api.get(f"/racks/{sc.name}/power")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_measured_draw_and_a_budget_that_refuses_a_power_on(rack: Scenario) -> None:
    with rack.api() as api:
        on = api.post("/machines/vm1/power", json={"action": "on"})
        assert on.status_code == 200, on.text
    # vm1's draw is measured (its PDU outlet, else its BMC's DCMI reading), not declared.
    deadline = time.monotonic() + 60
    while True:
        power = _rack_power(rack)
        vm1 = next(m for m in power["machines"] if m["name"] == "vm1")
        if vm1["source"] in ("pdu", "bmc") and vm1["watts"] > 0:
            break
        assert time.monotonic() < deadline, power
        time.sleep(1)
    assert power["measured_watts"] >= vm1["watts"] and power["budget_watts"] == 2000, power
    with rack.api() as api:
        assert api.post("/machines/vm1/power", json={"action": "off"}).status_code == 200
        budget = api.patch(f"/racks/{rack.name}", json={"power_budget_watts": 1})
        assert budget.status_code == 200, budget.text
        # Off, vm1 counts 0 W; powering it on adds its last reading: over a 1 W budget.
        refused = api.post("/machines/vm1/power", json={"action": "on"})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "rack_over_budget" and "force" in error["hint"], error
        assert f"rack {rack.name} would draw" in error["message"], error
        assert rack.machine("vm1")["power_state"] == "off"
        # The rack's token is an admin's: it may force the power-on.
        forced = api.post("/machines/vm1/power", json={"action": "on", "force": True})
        assert forced.status_code == 200, forced.text
        api.patch(f"/racks/{rack.name}", json={"power_budget_watts": None})
