"""One boot of a machine into a ramdisk or OS that the daemon drives over SSH.

A Deployment row is the durable record of a deploy (or an inspection, or a release
wipe): the per-deploy SSH key pair (private half encrypted), the host key the booted
OS reported, the address it reached us from, and the time of every phase. Nothing a
deploy needs lives only in memory, so a restarted daemon resumes from this row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, text
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, new_uuid, utcnow


class Deployment(SQLModel, table=True):
    #: At most one running (outcome "") deployment per machine.
    __table_args__ = (
        Index(
            "uq_deployment_running",
            "machine_id",
            unique=True,
            sqlite_where=text("outcome = ''"),
            postgresql_where=text("outcome = ''"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(default_factory=new_uuid, unique=True, index=True, max_length=36)
    machine_id: int = Field(foreign_key="machine.id", ondelete="CASCADE", index=True)
    allocation_id: int | None = Field(
        default=None, foreign_key="allocation.id", ondelete="SET NULL", index=True
    )
    #: deploy | inspect
    kind: str = Field(default="deploy", max_length=16)
    image_id: int | None = Field(default=None, foreign_key="image.id", ondelete="RESTRICT")
    #: 1 for the first try; a resumed or retried deploy counts up.
    attempt: int = Field(default=1, ge=1)
    ssh_public_key: str = Field(default="", max_length=1024)
    #: Fernet token (provisiond.secrets); never returned or logged.
    ssh_private_key_encrypted: str = Field(default="")
    #: The host key the booted OS reported in its callback ("ssh-ed25519 AAAA...").
    host_key: str = Field(default="", max_length=2048)
    #: The address the callback came from; SSH goes there.
    address: str = Field(default="", max_length=64)
    #: phase name -> ISO-8601 UTC time it was reached (power_cycle, dhcp, tftp, ...).
    phases: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: "" while running, else active | available | failed | superseded
    outcome: str = Field(default="", max_length=16, index=True)
    failure_reason: str = Field(default="", max_length=1024)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
