"""The virtual rack's switch plan: what the inventory plans is what the switch announces,
except for the two guests whose cables a test swapped."""

from __future__ import annotations

import pytest
import yaml

from provisiond.agent import lldp
from provisiond.errors import BadRequest
from provisiond.rack.lldp_switch import announcements, check_swap
from provisiond.rack.vrack_files import (
    GuestState,
    RackState,
    inventory_yaml,
    switch_chassis_mac,
    switch_name,
)


def rack(count: int, swap: list[str] | None = None, name: str = "lab7") -> RackState:
    state = RackState(
        name=name, state_dir="/nonexistent", netns=f"pvd-{name}", bridge="br0",
        subnet="10.213.0.0/24", boot_address="10.213.0.1", ipv6_prefix="fd00:213::/64",
        ipv6_address="fd00:213::1", http_port=8080, accel="tcg", bmc_username="admin",
        swap_cables=swap or [],
    )  # fmt: skip
    for k in range(1, count + 1):
        state.guests.append(
            GuestState(k, f"vm{k}", f"52:54:00:00:00:{k:02x}", f"10.213.0.{10 + k}", f"tap{k}",
                       "", "", "", "127.0.0.1", 6000 + k, 384, 1, 64)
        )  # fmt: skip
    return state


def planned_ports(state: RackState) -> dict[str, str]:
    """guest -> the switch port its cabled NIC is planned on, from the inventory file."""
    doc = yaml.safe_load(inventory_yaml(state))
    return {
        m["name"]: nic["switch_port"] for m in doc["machines"] for nic in m["nics"] if nic["pxe"]
    }


def test_the_inventory_plans_guest_k_on_swp_k_of_the_rack_switch() -> None:
    state = rack(3)
    doc = yaml.safe_load(inventory_yaml(state))
    (switch,) = doc["switches"]
    assert switch["name"] == "lab7-sw1" == switch_name("lab7")
    assert switch["chassis_mac"] == switch_chassis_mac("lab7")
    assert switch["mgmt_address"] == "10.213.0.1" and switch["rack"] == "lab7"
    assert [p["name"] for p in switch["ports"]] == ["swp1", "swp2", "swp3"]
    assert planned_ports(state) == {f"vm{k}": f"lab7-sw1/swp{k}" for k in (1, 2, 3)}


def test_the_switch_announces_the_plan() -> None:
    state = rack(3)
    for tap, neighbour in announcements(state, 2.0):
        guest = next(g for g in state.guests if g.tap == tap)
        planned = planned_ports(state)[guest.name]
        assert f"{neighbour['system_name']}/{neighbour['port_id']}" == planned
        assert neighbour["chassis_id"] == switch_chassis_mac("lab7")
        assert neighbour["mgmt_addresses"] == ["10.213.0.1"] and neighbour["ttl"] == 8
        frame = lldp.encode(neighbour, source_mac=neighbour["chassis_id"])
        assert lldp.decode(frame) | {"vlans": [], "pvid": None} == {
            **neighbour, "vlans": [], "pvid": None,
        }  # fmt: skip


def test_swapped_cables_cross_two_guests_only() -> None:
    state = rack(3, swap=["vm3", "vm1"])
    said = {tap: (n["port_id"], n["port_description"]) for tap, n in announcements(state, 2.0)}
    assert said == {"tap1": ("swp3", "vm3"), "tap2": ("swp2", "vm2"), "tap3": ("swp1", "vm1")}
    assert planned_ports(state)["vm1"] == "lab7-sw1/swp1"  # the plan itself is unchanged


def test_the_chassis_mac_is_stable_local_and_per_rack() -> None:
    mac = switch_chassis_mac("lab7")
    assert mac == switch_chassis_mac("lab7") != switch_chassis_mac("lab8")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len(bytes.fromhex(mac.replace(":", ""))) == 6


@pytest.mark.parametrize(
    "swap", [["vm1"], ["vm1", "vm1"], ["vm1", "vm4"], ["vm1", "vm2", "vm3"], ["a", "b"]]
)
def test_a_bad_swap_is_refused_with_a_hint(swap: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        check_swap(swap, 3)
    assert "two different guests" in caught.value.message
    assert "vm1 to vm3" in (caught.value.hint or "")


def test_a_good_swap() -> None:
    assert check_swap(None, 3) == [] and check_swap([], 3) == []
    assert check_swap([" vm2", "vm3 "], 3) == ["vm2", "vm3"]
