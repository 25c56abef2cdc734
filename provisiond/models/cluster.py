"""Several daemons on one PostgreSQL: who is alive, who leads what, and DHCP leases.

Every time in these rows is the database's clock (``now()``), never a daemon's: two
hosts whose clocks differ by minutes still agree on who is alive and whose lease ran
out (:mod:`provisiond.cluster`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime


class Daemon(SQLModel, table=True):
    """One running ``provisiond serve`` (a row per process start)."""

    #: ``host:pid:start`` (:func:`provisiond.container.daemon_id`).
    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=64)
    #: The schema revision this daemon's code knows (its SCHEMA_HEAD).
    schema_revision: str = Field(max_length=64)
    #: Its API URL and its provisioning networks' boot URLs (what seeds and agents try).
    api_url: str = Field(default="", max_length=255)
    boot_urls: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    #: What it can reach: {network name: namespace or ""}.
    networks: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    #: live -> draining -> stopped; live|draining -> dead (declared by another daemon).
    state: str = Field(default="live", max_length=16, index=True)
    #: Bumped each time the daemon (re)joins; lock owners carry it (the fence).
    epoch: int = Field(default=1)
    started_at: datetime = Field(sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime, index=True)
    #: Why it is dead, draining or stopped, and by whom.
    reason: str = Field(default="", max_length=512)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Leadership(SQLModel, table=True):
    """A role exactly one daemon holds at a time: a singleton job, or a network's DHCP.

    Taken by a conditional UPDATE at database time, held by renewing before
    ``expires_at``; ``epoch`` grows each time the holder changes, and a holder's writes
    check it in their own transaction (the fence).
    """

    name: str = Field(primary_key=True, max_length=128)
    holder: str | None = Field(default=None, max_length=160)
    epoch: int = Field(default=0)
    acquired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DhcpLease(SQLModel, table=True):
    """dnsmasq's leases, kept in the database so they survive a change of DHCP holder."""

    network: str = Field(primary_key=True, max_length=64)
    mac: str = Field(primary_key=True, max_length=17)
    ip: str = Field(max_length=45, index=True)
    hostname: str = Field(default="", max_length=255)
    client_id: str = Field(default="", max_length=255)
    #: When the lease ends (dnsmasq's own expiry), UTC.
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_by: str = Field(default="", max_length=160)
