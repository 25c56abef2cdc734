"""The pure cabling diff and the LLDP normalisation: planned ports against neighbours."""

from __future__ import annotations

from typing import Any

import pytest

from provisiond.cabling import lldp
from provisiond.cabling.check import PlannedNic, SwitchInfo, check

SW1 = SwitchInfo(
    "lab1-sw1",
    chassis_mac="44:38:39:00:00:01",
    mgmt_address="10.0.0.2",
    ports={"swp1": "vm1 eth0", "swp2": "vm2 eth0", "swp3": "vm3 eth0", "swp4": ""},
)
SW2 = SwitchInfo("lab1-sw2", chassis_mac="44:38:39:00:00:02", ports={"swp1": "", "swp2": ""})
SWITCHES = {s.name: s for s in (SW1, SW2)}


def seen(system: str = "lab1-sw1", port: str = "swp1", **kw: Any) -> dict[str, Any]:
    return {"system_name": system, "port_id": port, "port_id_subtype": "interface_name", **kw}


def nic(machine: str, port: str | None, saw: dict[str, Any] | None, **kw: Any) -> PlannedNic:
    switch = kw.pop("switch", "lab1-sw1" if port else None)
    return PlannedNic(machine, "eth0", f"52:54:00:00:00:0{machine[-1]}", switch=switch,
                      port=port, seen=saw or {}, **kw)  # fmt: skip


def one(n: PlannedNic) -> tuple[str, dict[str, Any]]:
    result = check([n], SWITCHES).results[0]
    return result.result, result.detail


def test_pass_fail_and_nothing_seen() -> None:
    assert one(nic("vm1", "swp1", seen()))[0] == "pass"
    verdict, detail = one(nic("vm1", "swp1", seen(port="swp4")))
    assert verdict == "fail"
    assert detail["expected"] == {"switch": "lab1-sw1", "port": "swp1"}
    assert detail["actual"]["switch"] == "lab1-sw1" and detail["actual"]["port"] == "swp4"
    assert detail["reason"] == "expected lab1-sw1/swp1, saw lab1-sw1/swp4"
    verdict, detail = one(nic("vm1", "swp1", seen(system="lab1-sw2", chassis_id="x")))
    assert verdict == "fail" and detail["actual"]["switch"] == "lab1-sw2"
    verdict, detail = one(nic("vm1", "swp1", seen(system="elsewhere", port="Ethernet9")))
    assert (verdict, detail["reason"]) == (
        "fail",
        "expected lab1-sw1/swp1, saw elsewhere/Ethernet9",
    )
    assert one(nic("vm1", "swp1", None)) == ("n/a", one(nic("vm1", "swp1", None))[1])
    assert one(nic("vm1", "swp1", None))[1]["reason"] == "no LLDP neighbour seen"


def test_a_nic_without_a_planned_port_is_not_checked() -> None:
    result = check([nic("vm1", None, seen())], SWITCHES).results[0]
    assert result.result == "" and result.nic.seen["system_name"] == "lab1-sw1"


def test_switch_by_fqdn_chassis_mac_and_mgmt_address() -> None:
    assert one(nic("vm1", "swp1", seen(system="LAB1-SW1.dc1.example.com")))[0] == "pass"
    by_mac = {"chassis_id": "44-38-39-00-00-01", "chassis_id_subtype": "mac", "port_id": "swp1"}
    verdict, detail = one(nic("vm1", "swp1", by_mac))
    assert (verdict, detail["matched_by"]["switch"]) == ("pass", "chassis_mac")
    by_mgmt = {"chassis_id": "abc", "chassis_id_subtype": "local",
               "mgmt_addresses": ["10.0.0.2"], "port_id": "swp1"}  # fmt: skip
    verdict, detail = one(nic("vm1", "swp1", by_mgmt))
    assert (verdict, detail["matched_by"]["switch"]) == ("pass", "mgmt_address")
    # Another MAC is another switch (lab1-sw2's), whatever the spelling.
    other = {"chassis_id": "4438.3900.0002", "chassis_id_subtype": "mac", "port_id": "swp1"}
    verdict, detail = one(nic("vm1", "swp1", other))
    assert verdict == "fail" and detail["actual"]["switch"] == "lab1-sw2"


def test_a_mac_as_port_id_never_fails_by_itself() -> None:
    opaque = {"system_name": "lab1-sw1", "port_id": "44:38:39:00:00:11", "port_id_subtype": "mac"}
    verdict, detail = one(nic("vm1", "swp1", {**opaque, "port_description": "swp1"}))
    assert (verdict, detail["matched_by"]["port"]) == ("pass", "port_description")
    # The port's planned description, as NetBox-fed switches send it.
    assert one(nic("vm1", "swp1", {**opaque, "port_description": "vm1 eth0"}))[0] == "pass"
    verdict, detail = one(nic("vm1", "swp1", opaque))
    assert verdict == "n/a" and "cannot be told" in detail["reason"]
    # A description naming another port is a real mismatch.
    assert one(nic("vm1", "swp1", {**opaque, "port_description": "swp4"}))[0] == "fail"


def test_a_swap_of_two_is_one_finding() -> None:
    a = nic("vm1", "swp1", seen(port="swp2"))
    b = nic("vm2", "swp2", seen(port="swp1"))
    outcome = check([a, b], SWITCHES)
    assert [r.result for r in outcome.results] == ["fail", "fail"]
    assert outcome.results[0].detail["swapped_with"] == "vm2 eth0"
    assert outcome.results[1].detail["swapped_with"] == "vm1 eth0"
    assert outcome.results[0].detail["reason"] == (
        "expected lab1-sw1/swp1, saw lab1-sw1/swp2 (swapped with vm2 eth0)"
    )
    assert len(outcome.findings) == 1
    assert outcome.findings[0]["kind"] == "swap"
    assert outcome.findings[0]["nics"] == ["vm1 eth0", "vm2 eth0"]


def test_a_three_way_rotation_is_not_a_swap() -> None:
    a = nic("vm1", "swp1", seen(port="swp2"))
    b = nic("vm2", "swp2", seen(port="swp3"))
    c = nic("vm3", "swp3", seen(port="swp1"))
    outcome = check([a, b, c], SWITCHES)
    assert [r.result for r in outcome.results] == ["fail"] * 3
    assert outcome.findings == []
    assert all("swapped_with" not in r.detail for r in outcome.results)
    assert outcome.results[0].detail["planned_for"] == "vm2 eth0"


def test_one_side_wrong_is_not_a_swap() -> None:
    a = nic("vm1", "swp1", seen(port="swp2"))
    b = nic("vm2", "swp2", seen(port="swp2"))
    outcome = check([a, b], SWITCHES)
    assert [r.result for r in outcome.results] == ["fail", "pass"] and outcome.findings == []


def test_new_shape_is_kept_and_bounded() -> None:
    entry = {
        "interface": "eth0", "mac": "52:54:00:AA:BB:01", "chassis_id": "44:38:39:00:00:01",
        "chassis_id_subtype": "mac", "system_name": "lab1-sw1", "system_description": "CL",
        "port_id": "swp1", "port_id_subtype": "interface_name", "port_description": "x",
        "mgmt_addresses": ["10.0.0.2"], "vlans": [{"id": 10, "name": "prov"}], "pvid": 10,
        "ttl": 120, "unknown": "ignored",
    }  # fmt: skip
    out = lldp.normalise(entry)
    assert out["mac"] == "52:54:00:aa:bb:01" and "unknown" not in out
    assert out["vlans"] == [{"id": 10, "name": "prov"}] and out["ttl"] == 120
    assert one(nic("vm1", "swp1", out))[0] == "pass"


def test_legacy_lldpcli_shape() -> None:
    out = lldp.normalise({"interface": "eno1", "chassis": "lab1-sw1",
                          "chassis_id": "44:38:39:00:00:01", "port": "swp1",
                          "port_description": ""})  # fmt: skip
    assert out["system_name"] == "lab1-sw1" and out["port_id"] == "swp1"
    assert out["chassis_id_subtype"] == "mac" and out["port_id_subtype"] == "interface_name"
    assert one(nic("vm1", "swp1", out))[0] == "pass"
    mac_port = lldp.normalise({"interface": "eno1", "chassis": "sw", "port": "AA:BB:CC:00:00:01"})
    assert mac_port["port_id_subtype"] == "mac"


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("eth0", "not an object"),
        ({"interface": "eth0", "system_name": 5}, "system_name is a int"),
        ({"interface": "eth0", "port_id": "x" * 256}, "256 characters"),
        ({"interface": "eth0", "port_id_subtype": "bogus"}, "port_id_subtype"),
        ({"interface": "eth0", "ttl": "120"}, "ttl"),
        ({"interface": "eth0", "vlans": [{"id": 5000}]}, "id must be"),
        ({"interface": "eth0", "mgmt_addresses": "10.0.0.1"}, "mgmt_addresses"),
        ({"mac": "nope", "port_id": "swp1"}, "not a MAC"),
        ({"port_id": "swp1"}, "neither an interface nor a MAC"),
        ({"interface": "eth0", "system_name": "a\x00b"}, "NUL"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(entry: Any, why: str) -> None:
    with pytest.raises(lldp.Refused, match=why):
        lldp.normalise(entry)
