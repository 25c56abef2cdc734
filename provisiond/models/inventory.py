"""Physical inventory: racks, switches and their ports, PDUs and their outlets."""

# No "from __future__ import annotations" here: SQLModel resolves relationship
# annotations at class creation, so forward references are quoted strings.
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from sqlalchemy import CheckConstraint, UniqueConstraint
from sqlmodel import Field, Relationship, SQLModel

from provisiond.models.base import UTCDateTime, utcnow

if TYPE_CHECKING:
    from provisiond.models.machine import Machine


class Rack(SQLModel, table=True):
    # Table models do not validate: the database refuses what placement and power budgets trust.
    __table_args__ = (
        CheckConstraint("u_height >= 1", name="ck_rack_u_height_positive"),
        CheckConstraint("power_budget_watts >= 0", name="ck_rack_power_budget_watts_not_negative"),
    )
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    site: str = Field(default="", max_length=64)
    u_height: int = Field(default=42, ge=1, le=60)
    power_budget_watts: int | None = Field(default=None, ge=0)
    #: Sum of the last power readings of the rack's machines (PDU outlet or BMC), watts.
    measured_watts: int | None = Field(default=None, ge=0)
    measured_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: "" | ok | over_90 | over_100: the last budget verdict; a change is an event.
    budget_status: str = Field(default="", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Switch(SQLModel, table=True):
    __table_args__ = (
        CheckConstraint("u_position >= 1", name="ck_switch_u_position_positive"),
        CheckConstraint("u_height >= 1", name="ck_switch_u_height_positive"),
    )
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    rack_id: int | None = Field(default=None, foreign_key="rack.id", ondelete="RESTRICT")
    u_position: int | None = Field(default=None, ge=1)
    u_height: int = Field(default=1, ge=1)
    vendor: str = Field(default="", max_length=64)
    model: str = Field(default="", max_length=64)
    mgmt_address: str = Field(default="", max_length=255)
    #: The chassis MAC the switch sends as its LLDP chassis id ("" when not known).
    chassis_mac: str = Field(default="", max_length=17)
    ports: list["SwitchPort"] = Relationship(
        back_populates="switch",
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "order_by": "SwitchPort.name"},
    )


class SwitchPort(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("switch_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    switch_id: int = Field(foreign_key="switch.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=64)
    vlan: int | None = Field(default=None, ge=1, le=4094)
    description: str = Field(default="", max_length=255)
    switch: "Switch" = Relationship(back_populates="ports")


class Pdu(SQLModel, table=True):
    __table_args__ = (
        CheckConstraint("u_position >= 1", name="ck_pdu_u_position_positive"),
        CheckConstraint("u_height >= 0", name="ck_pdu_u_height_not_negative"),
        CheckConstraint("capacity_watts >= 0", name="ck_pdu_capacity_watts_not_negative"),
    )
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    rack_id: int | None = Field(default=None, foreign_key="rack.id", ondelete="RESTRICT")
    u_position: int | None = Field(default=None, ge=1)
    u_height: int = Field(default=0, ge=0)
    capacity_watts: int | None = Field(default=None, ge=0)
    mgmt_address: str = Field(default="", max_length=255)
    #: PDU driver (provisiond.drivers.pdu registry), "" when the PDU is only recorded.
    driver: str = Field(default="", max_length=32)
    snmp_port: int = Field(default=161, ge=1, le=65535)
    #: "2c" or "3"; the community (v2c) or the v3 keys live encrypted in secret_encrypted.
    snmp_version: str = Field(default="2c", max_length=4)
    snmp_username: str = Field(default="", max_length=64)
    snmp_auth_protocol: str = Field(default="", max_length=16)
    snmp_priv_protocol: str = Field(default="", max_length=16)
    # Fernet token (provisiond.secrets); never returned by the API or logged.
    secret_encrypted: str | None = Field(default=None)
    power_watts: int | None = Field(default=None, ge=0)
    power_read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    unreachable_reason: str = Field(default="", max_length=512)
    outlets: list["Outlet"] = Relationship(
        back_populates="pdu",
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "order_by": "Outlet.number"},
    )


class Outlet(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("pdu_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    pdu_id: int = Field(foreign_key="pdu.id", ondelete="CASCADE", index=True)
    number: int = Field(ge=1)
    machine_id: int | None = Field(
        default=None, foreign_key="machine.id", ondelete="SET NULL", index=True
    )
    #: on | off | unknown, as last read back from the PDU.
    state: str = Field(default="unknown", max_length=16)
    power_watts: int | None = Field(default=None, ge=0)
    pdu: "Pdu" = Relationship(back_populates="outlets")
    machine: Optional["Machine"] = Relationship()
