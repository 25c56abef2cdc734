"""Request and response shapes of the inventory: racks, machines (NICs, BMC), switches
and PDUs. Shared by the API, its client and the services.

Table models (provisiond.models) stay apart from what the API accepts and shows.
Passwords come in as ``SecretStr`` (so a stray repr or log line shows ``***``)
and never go out: responses say only ``password_set``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
)

from provisiond.schemas.base import (
    INT_MAX,
    Address,
    Arch,
    Finite,
    Mac,
    Name,
    Out,
    Patch,
    Short,
    Strict,
    Tag,
    Text,
    _unique,
)
from provisiond.schemas.cabling import ChassisMac
from provisiond.schemas.disks import Hints, check_disk
from provisiond.schemas.pdus import (  # re-exported: their home is schemas.pdus
    OutletIn as OutletIn,
)
from provisiond.schemas.pdus import (
    OutletOut as OutletOut,
)
from provisiond.schemas.pdus import (
    OutletPowerIn as OutletPowerIn,
)
from provisiond.schemas.pdus import (
    PduIn as PduIn,
)
from provisiond.schemas.pdus import (
    PduOut as PduOut,
)
from provisiond.schemas.pdus import (
    PduPatch as PduPatch,
)
from provisiond.schemas.pdus import (
    PduVerifyIn as PduVerifyIn,
)

# --- racks -------------------------------------------------------------------


class RackIn(Strict):
    name: Name
    site: str = Field(default="", max_length=64)
    u_height: int = Field(default=42, ge=1, le=60)
    power_budget_watts: int | None = Field(default=None, ge=0, le=INT_MAX)


class RackPatch(Patch):
    nullable = frozenset({"power_budget_watts"})
    name: Name | None = None
    site: str | None = Field(default=None, max_length=64)
    u_height: int | None = Field(default=None, ge=1, le=60)
    power_budget_watts: int | None = Field(default=None, ge=0, le=INT_MAX)


class RackOut(Out):
    name: str
    site: str
    u_height: int
    power_budget_watts: int | None
    #: The draw the last power sync summed (readings; declared watts where none).
    measured_watts: int | None = None
    measured_at: datetime | None = None
    #: The nameplate: the sum of the machines' declared power_watts.
    declared_watts: int = 0
    #: "" (no budget or not summed yet) | ok | over_90 | over_100
    budget_status: str = ""
    created_at: datetime


# --- machines ----------------------------------------------------------------


class NicIn(Strict):
    mac: Mac
    name: str = Field(default="", max_length=32)
    pxe: bool = False
    ip_address: str = Field(default="", max_length=64)
    #: ``"switch/port"``, naming a port that exists on that switch.
    switch_port: str | None = Field(default=None, max_length=129, pattern=r"^[^/]+/.+$")


class NicOut(Out):
    mac: str
    name: str
    pxe: bool
    ip_address: str
    switch_port: str | None
    #: Last LLDP neighbour seen; cabling verdict ("" | pass | fail | n/a) and its detail.
    lldp: dict[str, Any] = {}
    lldp_seen_at: datetime | None = None
    cabling: str = ""
    cabling_detail: dict[str, Any] = {}


BmcDriver = Literal["ipmi", "redfish", "manual"]
#: How a Redfish BMC's TLS certificate is trusted: its pinned fingerprint, or the system CA
#: store. TLS verification cannot be switched off.
TlsVerify = Literal["fingerprint", "system"]
#: A SHA-256 certificate fingerprint in any usual spelling (``sha256:AB:CD:..``, openssl's
#: ``SHA256 Fingerprint=AB:..``, 64 hex digits); checked and stored as ``sha256:AB:CD:..``.
#: Not a secret: it is shown.
Fingerprint = Annotated[str, StringConstraints(max_length=128)]


class BmcIn(Strict):
    driver: BmcDriver = "ipmi"
    address: Address = ""
    #: Defaults to 623 for IPMI and 443 for Redfish.
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str = Field(default="", max_length=64)
    password: SecretStr | None = Field(default=None, max_length=256)
    credential_set: Name | None = None
    #: Redfish only: the pinned TLS certificate; "" for none.
    cert_fingerprint: Fingerprint = ""
    tls_verify: TlsVerify = "fingerprint"


class BmcPatch(Patch):
    nullable = frozenset({"password", "credential_set"})
    driver: BmcDriver | None = None
    address: Address | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = Field(default=None, max_length=64)
    #: Changed only when given; ``""`` clears it.
    password: SecretStr | None = Field(default=None, max_length=256)
    credential_set: Name | None = None
    #: ``""`` removes the pin.
    cert_fingerprint: Fingerprint | None = None
    tls_verify: TlsVerify | None = None


class BmcOut(Out):
    driver: str
    address: str
    port: int
    username: str
    password_set: bool
    credential_set: str | None
    cert_fingerprint: str = ""
    tls_verify: str = "fingerprint"
    unreachable_reason: str = ""


class _MachineFields(Strict):
    rack: Name | None = None
    u_position: int | None = Field(default=None, ge=1, le=60)
    serial: Short = ""
    vendor: Short = ""
    model: Short = ""
    cpus: int | None = Field(default=None, ge=0, le=100_000)
    ram_mib: int | None = Field(default=None, ge=0, le=INT_MAX)
    disks: list[
        Annotated[dict[str, str | int | Finite | bool | None], AfterValidator(check_disk)]
    ] = Field(default_factory=list, max_length=256)
    power_watts: int | None = Field(default=None, ge=0, le=INT_MAX)

    @field_validator("tags", check_fields=False)
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _unique(value, "tag")

    @field_validator("nics", check_fields=False)
    @classmethod
    def _nics(cls, value: list[NicIn] | None) -> list[NicIn] | None:
        if value is not None:
            _unique([n.mac for n in value], "MAC")
            _unique([n.switch_port for n in value if n.switch_port], "switch port")
        return value


class MachineIn(_MachineFields):
    name: Name
    u_height: int = Field(default=1, ge=1, le=60)
    arch: Arch = "x86_64"
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    nics: list[NicIn] = Field(default_factory=list, max_length=64)
    bmc: BmcIn | None = None
    #: Root-device hints for disk-image deploys (name, size, serial, wwn, model, ...).
    root_device: Hints = Field(default_factory=dict)


class MachinePatch(_MachineFields, Patch):
    """Fields left out stay as they are; ``nics`` replaces all NICs; ``bmc: null`` removes it."""

    nullable = frozenset({"rack", "u_position", "cpus", "ram_mib", "power_watts", "bmc"})

    name: Name | None = None
    u_height: int | None = Field(default=None, ge=1, le=60)
    arch: Arch | None = None
    tags: list[Tag] | None = Field(default=None, max_length=64)
    nics: list[NicIn] | None = Field(default=None, max_length=64)
    bmc: BmcPatch | None = None
    #: ``{}`` clears them.
    root_device: Hints | None = None


class MachineOut(Out):
    uuid: str
    name: str
    rack: str | None
    u_position: int | None
    u_height: int
    serial: str
    vendor: str
    model: str
    arch: str
    cpus: int | None
    ram_mib: int | None
    disks: list[dict[str, Any]]
    root_device: dict[str, Any] = {}
    #: bios | uefi as last inspected ("" before).
    firmware: str = ""
    tags: list[str]
    power_watts: int | None
    state: str
    state_changed_at: datetime
    allowed_events: list[str]
    power_state: str
    maintenance_reason: str
    last_error: dict[str, Any] | None
    deadline: datetime | None
    lock_owner: str | None
    lock_expires: datetime | None
    #: The pinned SSH host key of the OS now running ("" when none) and the agent's pulse.
    ssh_host_key: str = ""
    last_heartbeat_at: datetime | None = None
    agent_version: str = ""
    hold_reason: str = ""  # why allocation skips it ("" when it does not)
    nics: list[NicOut]
    bmc: BmcOut | None
    created_at: datetime
    updated_at: datetime


#: Events an operator may fire; the others belong to the daemon (agent, reaper, allocation).
#: ``release`` wipes and frees a failed or leftover machine (an allocation's own release
#: goes through DELETE /allocations/{id}).
OperatorEvent = Literal["inspect", "manage", "retire", "provide", "release"]


class MachineEventIn(Strict):
    event: OperatorEvent
    reason: Text = ""


# --- switches and PDUs -------------------------------------------------------


class PortIn(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^/\s]+$")
    vlan: int | None = Field(default=None, ge=1, le=4094)
    description: Text = ""


class PortOut(Out):
    name: str
    vlan: int | None
    description: str
    #: The machine and MAC of the NIC wired to this port, if any.
    machine: str | None = None
    mac: str | None = None


class _SwitchFields(Strict):
    rack: Name | None = None
    u_position: int | None = Field(default=None, ge=1, le=60)
    vendor: str = Field(default="", max_length=64)
    model: str = Field(default="", max_length=64)
    mgmt_address: Address = ""
    chassis_mac: ChassisMac = ""  # its LLDP chassis id (the cabling check)

    @field_validator("ports", check_fields=False)
    @classmethod
    def _ports(cls, value: list[PortIn] | None) -> list[PortIn] | None:
        if value is not None:
            _unique([p.name for p in value], "port")
        return value


class SwitchIn(_SwitchFields):
    name: Name
    u_height: int = Field(default=1, ge=1, le=60)
    ports: list[PortIn] = Field(default_factory=list, max_length=1024)


class SwitchPatch(_SwitchFields, Patch):
    """``ports`` replaces the port list; a port wired to a NIC cannot be dropped."""

    nullable = frozenset({"rack", "u_position"})

    name: Name | None = None
    u_height: int | None = Field(default=None, ge=1, le=60)
    ports: list[PortIn] | None = Field(default=None, max_length=1024)


class SwitchOut(Out):
    name: str
    rack: str | None
    u_position: int | None
    u_height: int
    vendor: str
    model: str
    mgmt_address: str
    chassis_mac: str = ""
    ports: list[PortOut]


# OutletIn, PduIn, PduPatch, PduOut, ...: provisiond.schemas.pdus (imported above).
