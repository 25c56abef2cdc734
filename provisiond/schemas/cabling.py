"""What the cabling API answers: a verdict per NIC port, swaps, and topology imports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, StringConstraints

from provisiond.validators import normalize_mac


def _mac_or_empty(value: str) -> str:
    return normalize_mac(value) if value else ""


#: A switch's chassis MAC in any usual spelling, stored as ``aa:bb:cc:dd:ee:ff``; "" for none.
ChassisMac = Annotated[str, StringConstraints(max_length=32), AfterValidator(_mac_or_empty)]


class CablingPort(BaseModel):
    """One NIC: where the plan puts it, what LLDP saw there, and the verdict."""

    machine: str
    nic: str
    mac: str
    pxe: bool
    #: The planned switch and port (None when the NIC has no planned port: not checked).
    expected_switch: str | None
    expected_port: str | None
    #: The neighbour as seen (LLDP system name, chassis id, port id, port description).
    seen_system_name: str = ""
    seen_chassis_id: str = ""
    seen_port_id: str = ""
    seen_port_description: str = ""
    #: The inventory switch and port that neighbour is, where it can be told.
    actual_switch: str | None = None
    actual_port: str | None = None
    #: pass | fail | n/a, or "" when the NIC has no planned port.
    result: str
    reason: str = ""
    #: The other NIC of a swap ("vm2 eth0"), or whose planned port this NIC is on.
    swapped_with: str | None = None
    planned_for: str | None = None
    seen_at: datetime | None = None
    #: The machine's hold (allocation skips it while it is set).
    hold_reason: str = ""


class CablingOut(BaseModel):
    ports: list[CablingPort]
    #: One entry per swap: {"kind": "swap", "nics": ["vm1 eth0", "vm2 eth0"], "message": ...}.
    findings: list[dict[str, Any]]
    #: How many ports passed, failed, or could not be verified.
    counts: dict[str, int]
    policy: str


class TopologyImportOut(BaseModel):
    #: "vm1 eth0: lab1-sw1/swp1 -> lab1-sw1/swp2" for each NIC whose planned port changed.
    changed: list[str]
    unchanged: int
    #: NICs whose planned port went to another NIC of the file (now without a port).
    unwired: list[str]
    #: Lines left alone, with why (switch-to-switch links).
    skipped: list[str]
