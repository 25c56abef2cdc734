"""Request and response shapes shared by the API, its client and the services.

Table models (provisiond.models) stay apart from what the API accepts and shows.
Passwords come in as ``SecretStr`` (so a stray repr or log line shows ``***``)
and never go out: responses say only ``password_set``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from provisiond.validators import normalize_mac

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:=-]*$")
]
Arch = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[a-z0-9_]+$")]
#: A host name or IP address: no spaces, no scheme.
Address = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\s/]*$")]
Mac = Annotated[str, AfterValidator(normalize_mac)]
#: A file name inside the image store: relative, no ``..`` segment.


def _relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a relative path inside the image store, without '..'")
    return value


ImagePath = Annotated[
    str,
    StringConstraints(max_length=255, pattern=r"^[A-Za-z0-9._/+-]*$"),
    AfterValidator(_relative_path),
]
#: The largest value an INTEGER column holds on PostgreSQL.
INT_MAX = 2**31 - 1
Finite = Annotated[float, Field(allow_inf_nan=False)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(max_length=255)]
Short = Annotated[str, StringConstraints(max_length=128)]


#: A name or uuid in a URL, or a query filter: anything but NUL (PostgreSQL rejects it).
Key = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00]*$")]


def _has_nul(value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Patch(Strict):
    """A partial update: fields left out stay; ``null`` is allowed only where it means "none"."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_null(self) -> Patch:
        for key in sorted(self.model_fields_set - self.nullable):
            if getattr(self, key) is None:
                raise ValueError(f"{key} cannot be null; leave it out to keep it")
        return self


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)
    return values


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
    disks: list[dict[str, str | int | Finite | bool | None]] = Field(
        default_factory=list, max_length=256
    )
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


class MachinePatch(_MachineFields, Patch):
    """Fields left out stay as they are; ``nics`` replaces all NICs; ``bmc: null`` removes it."""

    nullable = frozenset({"rack", "u_position", "cpus", "ram_mib", "power_watts", "bmc"})

    name: Name | None = None
    u_height: int | None = Field(default=None, ge=1, le=60)
    arch: Arch | None = None
    tags: list[Tag] | None = Field(default=None, max_length=64)
    nics: list[NicIn] | None = Field(default=None, max_length=64)
    bmc: BmcPatch | None = None


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
    ports: list[PortOut]


class OutletIn(Strict):
    number: int = Field(ge=1, le=1024)
    machine: Name | None = None


class OutletOut(Out):
    number: int
    machine: str | None


class _PduFields(Strict):
    rack: Name | None = None
    u_position: int | None = Field(default=None, ge=1, le=60)
    capacity_watts: int | None = Field(default=None, ge=0, le=INT_MAX)
    mgmt_address: Address = ""

    @field_validator("outlets", check_fields=False)
    @classmethod
    def _outlets(cls, value: list[OutletIn] | None) -> list[OutletIn] | None:
        if value is not None:
            _unique([str(o.number) for o in value], "outlet")
        return value


class PduIn(_PduFields):
    name: Name
    u_height: int = Field(default=0, ge=0, le=60)
    outlets: list[OutletIn] = Field(default_factory=list, max_length=1024)


class PduPatch(_PduFields, Patch):
    """``outlets`` replaces the outlet list; an outlet feeding a machine cannot move to another."""

    nullable = frozenset({"rack", "u_position", "capacity_watts"})

    name: Name | None = None
    u_height: int | None = Field(default=None, ge=0, le=60)
    outlets: list[OutletIn] | None = Field(default=None, max_length=1024)


class PduOut(Out):
    name: str
    rack: str | None
    u_position: int | None
    u_height: int
    capacity_watts: int | None
    mgmt_address: str
    outlets: list[OutletOut]


# --- images ------------------------------------------------------------------


ImageKind = Literal["live", "disk"]
#: Checksums by file role.
Sums = dict[Literal["kernel", "initrd", "rootfs"], Sha256]
OsTemplate = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9._/-]*$")]


class ImageIn(Strict):
    name: Name
    arch: Arch = "x86_64"
    kind: ImageKind = "live"
    kernel: ImagePath = Field(min_length=1)
    initrd: ImagePath = Field(min_length=1)
    rootfs: ImagePath = ""
    kernel_args: str = Field(default="", max_length=1024)
    os_template: OsTemplate = ""
    sha256: Sums = Field(default_factory=dict)


class ImagePatch(Patch):
    name: Name | None = None
    arch: Arch | None = None
    kind: ImageKind | None = None
    kernel: ImagePath | None = Field(default=None, min_length=1)
    initrd: ImagePath | None = Field(default=None, min_length=1)
    rootfs: ImagePath | None = None
    kernel_args: str | None = Field(default=None, max_length=1024)
    os_template: OsTemplate | None = None
    sha256: Sums | None = None


class ImageOut(Out):
    name: str
    arch: str
    kind: str
    kernel: str
    initrd: str
    rootfs: str
    kernel_args: str
    os_template: str
    sha256: dict[str, str]
    created_at: datetime


# --- events ------------------------------------------------------------------


class EventOut(Out):
    id: int
    at: datetime
    machine: str
    kind: str
    event: str
    from_state: str | None
    to_state: str | None
    actor: str
    message: str
    details: dict[str, Any]
    request_id: str
    phase_timings: dict[str, float]


# --- tokens and credential sets ----------------------------------------------


class TokenIn(Strict):
    name: Name
    role: Literal["admin", "operator", "ci"] = "ci"
    quota_machines: int | None = Field(default=None, ge=0, le=INT_MAX)
    #: ``"90d"`` (units s, m, h, d, w) or an ISO 8601 date; None: never expires.
    expires: str | None = Field(default=None, min_length=1, max_length=64)


class TokenOut(Out):
    name: str
    role: str
    prefix: str
    quota_machines: int | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenOut):
    #: The clear token; this response is the only time it is shown.
    token: str


class CredentialIn(Strict):
    name: Name
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=256)


class CredentialPatch(Patch):
    username: str | None = Field(default=None, min_length=1, max_length=64)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=256)


class CredentialOut(Out):
    name: str
    username: str
    password_set: bool
    created_at: datetime
