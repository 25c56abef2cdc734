"""Request and response shapes of PDUs and their outlets (re-exported by
:mod:`provisiond.schemas.resources`). The SNMP secrets are write-only: they come in
as ``SecretStr`` and go out only as ``secret_set``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from provisiond.schemas.base import INT_MAX, Address, Name, Out, Patch, Strict, _unique


class OutletIn(Strict):
    number: int = Field(ge=1, le=1024)
    machine: Name | None = None


class OutletOut(Out):
    number: int
    machine: str | None
    #: on | off | unknown, and watts, as last read from the PDU.
    state: str = "unknown"
    power_watts: int | None = None


SnmpVersion = Literal["2c", "3"]
SnmpAuth = Literal["", "sha", "sha256"]
SnmpPriv = Literal["", "aes128", "aes256"]


class _PduSnmpPatch(Strict):
    """A PDU's driver and SNMP settings. The secrets are write-only: stored encrypted,
    shown only as ``secret_set``; ``snmp_community`` for SNMPv2c, the two keys for v3."""

    driver: str | None = Field(default=None, max_length=32)
    snmp_port: int | None = Field(default=None, ge=1, le=65535)
    snmp_version: SnmpVersion | None = None
    snmp_username: str | None = Field(default=None, max_length=64)
    snmp_auth_protocol: SnmpAuth | None = None
    snmp_priv_protocol: SnmpPriv | None = None
    snmp_community: SecretStr | None = Field(default=None, max_length=256)
    snmp_auth_key: SecretStr | None = Field(default=None, min_length=8, max_length=256)
    snmp_priv_key: SecretStr | None = Field(default=None, min_length=8, max_length=256)


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
    driver: str = Field(default="", max_length=32)
    snmp_port: int = Field(default=161, ge=1, le=65535)
    snmp_version: SnmpVersion = "2c"
    snmp_username: str = Field(default="", max_length=64)
    snmp_auth_protocol: SnmpAuth = ""
    snmp_priv_protocol: SnmpPriv = ""
    snmp_community: SecretStr | None = Field(default=None, max_length=256)
    snmp_auth_key: SecretStr | None = Field(default=None, min_length=8, max_length=256)
    snmp_priv_key: SecretStr | None = Field(default=None, min_length=8, max_length=256)


class PduPatch(_PduFields, _PduSnmpPatch, Patch):
    """``outlets`` replaces the outlet list; an outlet feeding a machine cannot move to another."""

    nullable = frozenset({"rack", "u_position", "capacity_watts"})

    name: Name | None = None
    u_height: int | None = Field(default=None, ge=0, le=60)
    outlets: list[OutletIn] | None = Field(default=None, max_length=1024)


class OutletPowerIn(Strict):
    action: Literal["on", "off", "cycle"]


class PduVerifyIn(Strict):
    """Bounds of ``pdus verify``, in seconds: one BMC probe, the wait for the expected
    BMC to go dark, and the wait for it to answer again. One outlet's check may take
    longer than ``lock_ttl_s``: the machine's lock is renewed while it runs
    (:func:`provisiond.pdus.outlets.machine_locked`)."""

    probe_s: float = Field(default=3.0, gt=0, le=30)
    settle_s: float = Field(default=10.0, gt=0, le=120)
    recover_s: float = Field(default=60.0, gt=0, le=600)


class PduOut(Out):
    name: str
    rack: str | None
    u_position: int | None
    u_height: int
    capacity_watts: int | None
    mgmt_address: str
    outlets: list[OutletOut]
    driver: str = ""
    snmp_port: int = 161
    snmp_version: str = "2c"
    snmp_username: str = ""
    snmp_auth_protocol: str = ""
    snmp_priv_protocol: str = ""
    #: Whether a community (v2c) or keys (v3) are stored; they are never shown.
    secret_set: bool = False
    power_watts: int | None = None
    power_read_at: datetime | None = None
    unreachable_reason: str = ""
