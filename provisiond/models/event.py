"""The append-only event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, utcnow


class Event(SQLModel, table=True):
    # No foreign key: events outlive the machines they describe.
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    machine_id: int | None = Field(default=None, index=True)
    machine_name: str = Field(default="", max_length=64)
    #: The allocation the event is about, if any (no foreign key, as for machines).
    allocation_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=32, index=True)  # transition | power | boot | audit | ...
    event: str = Field(default="", max_length=32)
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str | None = Field(default=None, max_length=32)
    actor: str = Field(default="", max_length=128)
    message: str = Field(default="")
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    request_id: str = Field(default="", max_length=64)
    phase_timings: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
