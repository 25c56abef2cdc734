"""Machines, their NICs and BMCs, and the credential sets discovery tries."""

# No "from __future__ import annotations" here: SQLModel resolves relationship
# annotations at class creation, so forward references are quoted strings.
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, CheckConstraint
from sqlmodel import Field, Relationship, SQLModel

from provisiond.models.base import UTCDateTime, new_uuid, utcnow


class Machine(SQLModel, table=True):
    # Table models do not validate: the database refuses what placement and matching trust.
    __table_args__ = (
        CheckConstraint("cpus >= 0", name="ck_machine_cpus_not_negative"),
        CheckConstraint("ram_mib >= 0", name="ck_machine_ram_mib_not_negative"),
        CheckConstraint("u_position >= 1", name="ck_machine_u_position_positive"),
        CheckConstraint("u_height >= 1", name="ck_machine_u_height_positive"),
        CheckConstraint("power_watts >= 0", name="ck_machine_power_watts_not_negative"),
    )
    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(default_factory=new_uuid, unique=True, index=True, max_length=36)
    name: str = Field(unique=True, index=True, max_length=64)
    rack_id: int | None = Field(
        default=None, foreign_key="rack.id", ondelete="RESTRICT", index=True
    )
    u_position: int | None = Field(default=None, ge=1)
    u_height: int = Field(default=1, ge=1)
    serial: str = Field(default="", max_length=128, index=True)
    vendor: str = Field(default="", max_length=128)
    model: str = Field(default="", max_length=128)
    arch: str = Field(default="x86_64", max_length=16)
    cpus: int | None = Field(default=None, ge=0)
    ram_mib: int | None = Field(default=None, ge=0)
    disks: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    #: Root-device hints for a disk-image deploy (name, size, serial, wwn, model,
    #: vendor, rotational; see provisiond.schemas.disks.RootDeviceHints).
    root_device: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: bios | uefi as the agent last reported it; "" until inspected.
    firmware: str = Field(default="", max_length=8)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    power_watts: int | None = Field(default=None, ge=0)
    #: The last measured draw (watts), where from ("bmc" | "pdu") and when.
    measured_watts: int | None = Field(default=None, ge=0)
    measured_source: str = Field(default="", max_length=8)
    measured_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Why the machine is held out of allocation by a check ("" when it is not), e.g.
    #: the cabling check under policy "hold". Allocation never claims a held machine.
    hold_reason: str = Field(default="", max_length=512)
    # Lifecycle: only provisiond.lifecycle.advance() writes state, deadline and last_error.
    state: str = Field(default="new", index=True, max_length=32)
    state_changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deadline: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    last_error: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    maintenance_reason: str = Field(default="", max_length=255)
    power_state: str = Field(default="unknown", max_length=16)
    # DB lock (provisiond.locks): owner and expiry, taken by a conditional UPDATE.
    lock_owner: str | None = Field(default=None, max_length=128)
    lock_expires: datetime | None = Field(default=None, sa_type=UTCDateTime)
    agent_token_hash: str | None = Field(default=None, max_length=64)
    #: Pinned SSH host key of the OS now running ("ssh-ed25519 AAAA..."); "" when none.
    ssh_host_key: str = Field(default="", max_length=2048)
    last_heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    agent_version: str = Field(default="", max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    nics: list["Nic"] = Relationship(
        back_populates="machine",
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "order_by": "Nic.id"},
    )
    bmc: Optional["Bmc"] = Relationship(
        back_populates="machine",
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "uselist": False},
    )


class Nic(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    machine_id: int = Field(foreign_key="machine.id", ondelete="CASCADE", index=True)
    mac: str = Field(unique=True, index=True, max_length=17)
    name: str = Field(default="", max_length=32)
    pxe: bool = False
    ip_address: str = Field(default="", max_length=64)
    switch_port_id: int | None = Field(
        default=None, foreign_key="switchport.id", ondelete="SET NULL", unique=True
    )
    #: The last LLDP neighbour the agent saw on this NIC (decoded TLVs), {} when none.
    lldp: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    lldp_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The cabling check's last verdict: "" (not checked) | pass | fail | n/a.
    cabling: str = Field(default="", max_length=8)
    #: Expected and seen neighbour (and "swapped_with") behind the verdict.
    cabling_detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    machine: "Machine" = Relationship(back_populates="nics")


class Bmc(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    machine_id: int = Field(foreign_key="machine.id", ondelete="CASCADE", unique=True)
    driver: str = Field(default="ipmi", max_length=16)
    address: str = Field(default="", max_length=255, index=True)
    port: int = Field(default=623, ge=1, le=65535)
    username: str = Field(default="", max_length=64)
    # Fernet token (provisiond.secrets); never returned by the API or logged.
    secret_encrypted: str | None = Field(default=None)
    credential_set_id: int | None = Field(
        default=None, foreign_key="credentialset.id", ondelete="SET NULL"
    )
    #: A Redfish BMC's pinned TLS certificate, "sha256:AB:CD:.." ("" when none); not a secret.
    cert_fingerprint: str = Field(default="", max_length=128)
    #: How a Redfish BMC's certificate is trusted: "fingerprint" (the pin) or "system" (CA store).
    tls_verify: str = Field(default="fingerprint", max_length=16)
    mac: str = Field(default="", max_length=17)
    unreachable_reason: str = Field(default="", max_length=512)
    #: Consecutive failed power reads; power sync marks the BMC unreachable past a threshold.
    power_failures: int = Field(default=0, ge=0)
    machine: "Machine" = Relationship(back_populates="bmc")


class CredentialSet(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    username: str = Field(max_length=64)
    secret_encrypted: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
