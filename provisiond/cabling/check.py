"""The cabling check: the planned switch port of each NIC against the LLDP neighbour it saw.

Pure: no database, no clock. In the spirit of Cumulus PTM, every NIC with a planned
port gets a verdict with the expected and the actual neighbour side by side:

- ``pass``: the neighbour is the planned switch, on the planned port;
- ``fail``: a neighbour was seen, and it is another switch or another port;
- ``n/a``: nothing was seen, or the port cannot be told (see below).

The switch is recognised by its LLDP system name (an FQDN matches its first label),
its chassis MAC (chassis id subtype ``mac``, any spelling) or a management address.
The port by its port id, or by the port description naming the port or carrying the
port's planned description. Many switches send an opaque port id (the port's MAC, an
ifIndex): NetBox shows every such port as a mismatch. Here an opaque id is never a
reason to fail: the description decides, and when it says nothing the verdict is
``n/a`` ("cannot be verified"), not ``fail``.

A swap is two NICs each on the other's planned port: both fail with ``swapped_with``
naming the other, and :attr:`Outcome.findings` holds one ``swap`` finding for the pair.
A rotation of three or more is not a swap: each fails on its own (with ``planned_for``
naming whose port it is on).

>>> sw = SwitchInfo("sw1", ports={"swp1": "", "swp2": ""})
>>> a = PlannedNic("vm1", "eth0", "52:54:00:00:00:01", switch="sw1", port="swp1",
...                seen={"system_name": "sw1", "port_id": "swp1"})
>>> check([a], {"sw1": sw}).results[0].result
'pass'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisiond.cabling.lldp import as_mac

PASS, FAIL, NA = "pass", "fail", "n/a"
#: Port id subtypes that name the port; the others (a MAC, an ifIndex) are opaque.
NAMING_SUBTYPES = frozenset({"interface_name", "interface_alias", "port_component", ""})


@dataclass(frozen=True)
class SwitchInfo:
    """A switch of the inventory: what identifies it and its ports (name -> description)."""

    name: str
    chassis_mac: str = ""
    mgmt_address: str = ""
    ports: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedNic:
    """One NIC: its planned port (``switch``/``port``, None when not planned) and the
    neighbour it saw (the stored shape of :mod:`provisiond.cabling.lldp`, {} for none)."""

    machine: str
    nic: str
    mac: str
    switch: str | None = None
    port: str | None = None
    seen: Mapping[str, Any] = field(default_factory=dict)
    pxe: bool = False

    @property
    def label(self) -> str:
        return f"{self.machine} {self.nic or self.mac}"


@dataclass
class Result:
    nic: PlannedNic
    #: pass | fail | n/a, or "" for a NIC without a planned port (not checked).
    result: str
    detail: dict[str, Any]


@dataclass
class Outcome:
    results: list[Result]
    #: One entry per swap: {"kind": "swap", "nics": [a, b], "message": ...}.
    findings: list[dict[str, Any]]


def _host(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        return name.split(".", 1)[0]


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text.strip().lower()


def switch_match(seen: Mapping[str, Any], switch: SwitchInfo) -> str | None:
    """How ``seen`` is ``switch``: "system_name", "chassis_mac", "mgmt_address" or None."""
    name = str(seen.get("system_name") or "")
    if name and (name.lower() == switch.name.lower() or _host(name) == _host(switch.name)):
        return "system_name"
    chassis = str(seen.get("chassis_id") or "")
    by_mac = seen.get("chassis_id_subtype") in ("mac", "", None)
    if switch.chassis_mac and by_mac and as_mac(chassis) == as_mac(switch.chassis_mac):
        return "chassis_mac"
    if switch.mgmt_address:
        wanted = _address(switch.mgmt_address)
        addresses = [str(a) for a in seen.get("mgmt_addresses") or []]
        if seen.get("chassis_id_subtype") == "network_address":
            addresses.append(chassis)
        if any(_address(a) == wanted for a in addresses):
            return "mgmt_address"
    return None


def _opaque(seen: Mapping[str, Any]) -> bool:
    subtype = str(seen.get("port_id_subtype") or "")
    return subtype not in NAMING_SUBTYPES or as_mac(str(seen.get("port_id") or "")) is not None


def port_match(seen: Mapping[str, Any], name: str, description: str) -> str | None:
    """How ``seen`` is the port ``name`` (planned ``description``): "port_id",
    "port_description" or None."""
    port_id = str(seen.get("port_id") or "").strip().lower()
    if port_id and port_id == name.lower():
        return "port_id"
    said = str(seen.get("port_description") or "").strip().lower()
    if said and (said == name.lower() or (description and said == description.strip().lower())):
        return "port_description"
    return None


class SwitchIndex:
    """The switches by what identifies them (a look-up per neighbour, not a scan)."""

    def __init__(self, switches: Mapping[str, SwitchInfo]) -> None:
        self.by_name: dict[str, SwitchInfo] = {}
        self.by_mac: dict[str, SwitchInfo] = {}
        self.by_address: dict[str, SwitchInfo] = {}
        for switch in switches.values():
            for key in (switch.name.lower(), _host(switch.name)):
                self.by_name.setdefault(key, switch)
            if as_mac(switch.chassis_mac):
                self.by_mac.setdefault(str(as_mac(switch.chassis_mac)), switch)
            if switch.mgmt_address:
                self.by_address.setdefault(_address(switch.mgmt_address), switch)

    def find(self, seen: Mapping[str, Any]) -> tuple[SwitchInfo | None, str]:
        name = str(seen.get("system_name") or "")
        found = name and (self.by_name.get(name.lower()) or self.by_name.get(_host(name)))
        if found:
            return found, "system_name"
        chassis = str(seen.get("chassis_id") or "")
        if seen.get("chassis_id_subtype") in ("mac", "", None):
            found = self.by_mac.get(as_mac(chassis) or "")
            if found:
                return found, "chassis_mac"
        addresses = [str(a) for a in seen.get("mgmt_addresses") or []]
        if seen.get("chassis_id_subtype") == "network_address":
            addresses.append(chassis)
        for address in addresses:
            found = self.by_address.get(_address(address))
            if found:
                return found, "mgmt_address"
        return None, ""


def identify(
    seen: Mapping[str, Any], switches: SwitchIndex
) -> tuple[SwitchInfo | None, str, str | None]:
    """The inventory switch ``seen`` is (with how) and the port on it, where they tell."""
    switch, how = switches.find(seen)
    if switch is None:
        return None, "", None
    ports = [p for p, desc in switch.ports.items() if port_match(seen, p, desc)]
    # A description shared by several ports names none of them.
    return switch, how, ports[0] if len(ports) == 1 else None


def _actual(seen: Mapping[str, Any], switch: SwitchInfo | None, port: str | None) -> dict[str, Any]:
    return {
        "switch": switch.name if switch else None,
        "port": port,
        "system_name": seen.get("system_name", ""),
        "chassis_id": seen.get("chassis_id", ""),
        "port_id": seen.get("port_id", ""),
        "port_description": seen.get("port_description", ""),
    }


def _shown(actual: Mapping[str, Any]) -> str:
    switch = actual["switch"] or actual["system_name"] or actual["chassis_id"] or "?"
    port = actual["port"] or actual["port_id"] or actual["port_description"] or "?"
    return f"{switch}/{port}"


def _verdict(nic: PlannedNic, switches: Mapping[str, SwitchInfo], index: SwitchIndex) -> Result:
    expected = {"switch": nic.switch, "port": nic.port}
    planned = switches.get(nic.switch or "")
    seen = nic.seen
    detail: dict[str, Any] = {"expected": expected, "actual": None, "matched_by": {}}
    if not seen:
        detail["reason"] = "no LLDP neighbour seen"
        return Result(nic, NA, detail)
    found, how, port = identify(seen, index)
    how_here = switch_match(seen, planned) if planned else None
    if how_here is not None and planned is not None:
        found, how = planned, how_here
        ports = [p for p, d in planned.ports.items() if port_match(seen, p, d)]
        port = ports[0] if len(ports) == 1 else None
    detail["actual"] = actual = _actual(seen, found, port)
    want = f"{nic.switch}/{nic.port}"
    if how_here is None:
        detail["reason"] = f"expected {want}, saw {_shown(actual)}"
        return Result(nic, FAIL, detail)
    detail["matched_by"] = {"switch": how}
    assert planned is not None and nic.port is not None
    by = port_match(seen, nic.port, planned.ports.get(nic.port, ""))
    if by is not None:
        detail["matched_by"]["port"] = by
        detail["reason"] = f"on {want}"
        return Result(nic, PASS, detail)
    if port is None and _opaque(seen):
        detail["reason"] = (
            f"on switch {nic.switch}, but its port cannot be told: the switch sends an "
            f"opaque port id ({seen.get('port_id_subtype') or 'mac'}) and a port description "
            "naming no port"
        )
        return Result(nic, NA, detail)
    detail["reason"] = f"expected {want}, saw {_shown(actual)}"
    return Result(nic, FAIL, detail)


def check(nics: Sequence[PlannedNic], switches: Mapping[str, SwitchInfo]) -> Outcome:
    """A verdict for every NIC of ``nics`` ("" for those without a planned port) and the
    swaps among them. ``switches`` is every switch the neighbours may be."""
    results: list[Result] = []
    owner: dict[tuple[str, str], Result] = {}
    index = SwitchIndex(switches)
    for nic in nics:
        if nic.switch is None or nic.port is None:
            results.append(Result(nic, "", {"reason": "no planned switch port"}))
            continue
        result = _verdict(nic, switches, index)
        results.append(result)
        owner[(nic.switch, nic.port)] = result
    findings: list[dict[str, Any]] = []
    paired: set[int] = set()
    for result in results:
        actual = result.detail.get("actual") or {}
        if result.result != FAIL or not actual.get("port"):
            continue
        other = owner.get((actual["switch"], actual["port"]))
        if other is None or other is result:
            continue
        result.detail["planned_for"] = other.nic.label
        back = other.detail.get("actual") or {}
        mutual = (back.get("switch"), back.get("port")) == (result.nic.switch, result.nic.port)
        if not mutual or other.result != FAIL:
            continue
        result.detail["swapped_with"] = other.nic.label
        result.detail["swapped_with_mac"] = other.nic.mac
        result.detail["reason"] += f" (swapped with {other.nic.label})"
        if id(other) in paired:
            continue
        paired.add(id(result))
        a, b = result.nic, other.nic
        findings.append(
            {
                "kind": "swap",
                "nics": [a.label, b.label],
                "message": f"{a.label} and {b.label} are swapped: {a.label} is on "
                f"{b.switch}/{b.port}, {b.label} is on {a.switch}/{a.port}",
            }
        )
    return Outcome(results, findings)
