"""What the machine agent sends and what the daemon answers (``/api/v1/agent/...``).

The agent (:mod:`provisiond.agent.agent`, a stdlib-only single file) builds these
payloads as plain dicts; this module is the daemon's side of the contract. Unknown
keys are ignored so that a newer agent can talk to an older daemon; every string
is bounded so that a report can never overflow a column, on SQLite or PostgreSQL.

    {"agent_version": "0.1.0", "hostname": "node1", "kernel": "6.1.0-18-amd64",
     "arch": "x86_64", "cpus": 8, "cpu_model": "AMD EPYC 7302", "ram_mib": 31905,
     "disks": [{"name": "sda", "size_bytes": 480103981056, "model": "SSD",
                "rotational": false}],
     "nics": [{"name": "eno1", "mac": "52:54:00:aa:bb:cc", "operstate": "up",
               "speed_mbps": 1000, "ipv4": ["10.0.0.5/24"], "virtual": false}],
     "dmi": {"sys_vendor": "Dell Inc.", "product_name": "R640", "product_serial": "ABC"},
     "lldp": [{"interface": "eno1", "mac": "52:54:00:aa:bb:cc",
               "chassis_id": "02:1f:00:aa:00:01", "chassis_id_subtype": "mac",
               "system_name": "tor1", "system_description": "SONiC",
               "port_id": "Ethernet12", "port_id_subtype": "interface_name",
               "port_description": "node1 eno1", "mgmt_addresses": ["10.0.0.2"],
               "vlans": [{"id": 100, "name": "prov"}], "pvid": 100, "ttl": 120}]}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from provisiond.schemas.base import INT_MAX
from provisiond.validators import normalize_mac

#: Where the agent heartbeats when the daemon has no better idea.
DEFAULT_HEARTBEAT_INTERVAL_S = 15.0

Short = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00]*$")]
Long = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00]*$")]
Mac = Annotated[str, AfterValidator(normalize_mac)]
Version = Annotated[str, StringConstraints(max_length=32, pattern=r"^[^\x00]*$")]


class _Report(BaseModel):
    # Forward compatible: a newer agent may send fields this daemon does not know yet.
    model_config = ConfigDict(extra="ignore")


class DiskReport(_Report):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    size_bytes: int = Field(ge=0)
    model: Short = ""
    rotational: bool = False


class NicReport(_Report):
    name: Annotated[str, StringConstraints(max_length=32)] = ""
    mac: Mac
    operstate: Annotated[str, StringConstraints(max_length=16)] = "unknown"
    speed_mbps: int | None = Field(default=None, ge=0, le=INT_MAX)
    ipv4: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    #: No ``/sys/class/net/<nic>/device``: a bridge, veth, bond or tunnel.
    virtual: bool = False


class DmiReport(_Report):
    sys_vendor: Short = ""
    product_name: Short = ""
    product_serial: Short = ""


class InventoryReport(_Report):
    agent_version: Version = ""
    hostname: Long = ""
    kernel: Long = ""
    arch: Annotated[str, StringConstraints(max_length=16)] = ""
    #: How the running kernel was booted ("" from agents that predate the field).
    firmware: Literal["uefi", "bios", ""] = ""
    cpus: int = Field(ge=1, le=1_000_000)
    cpu_model: Long = ""
    ram_mib: int = Field(ge=0, le=INT_MAX)
    disks: list[DiskReport] = Field(default_factory=list, max_length=1024)
    nics: list[NicReport] = Field(default_factory=list, max_length=1024)
    dmi: DmiReport = Field(default_factory=DmiReport)
    #: LLDP neighbours, one per interface that heard one: what the agent captured itself
    #: (:mod:`provisiond.agent.lldp`), else its summary of ``lldpcli``. Keys: ``interface``,
    #: ``mac`` (the machine's NIC), ``chassis_id`` and ``chassis_id_subtype`` (``mac``,
    #: ``network_address``, ``interface_name``, ``local``, ...), ``system_name``,
    #: ``system_description``, ``port_id`` and ``port_id_subtype``, ``port_description``,
    #: ``mgmt_addresses``, ``vlans`` (``[{"id", "name"}]``), ``pvid`` and ``ttl``. Older
    #: agents sent ``{"interface", "chassis", "port"}``. Kept as sent (unknown keys too), so
    #: the cabling check reads it defensively; the list is bounded, as every report is.
    lldp: list[dict[str, Any]] = Field(default_factory=list, max_length=1024)


class Heartbeat(_Report):
    agent_version: Version = ""
    hostname: Long = ""
    uptime_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class AgentReply(BaseModel):
    """The daemon's answer: what to do now and when to call again."""

    #: ``poweroff``: shut the machine down now (inspection done, or nothing should run here).
    action: Literal["poweroff"] | None = None
    interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    #: The machine's lifecycle state after this report, for the agent's log.
    state: str
