"""Allocations: a request for a machine by a token, with constraints and a lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, new_uuid, utcnow


class Allocation(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("owner_token_id", "idempotency_key"),
        # Table models do not validate: the database refuses what would corrupt scheduling.
        CheckConstraint("lease_s > 0", name="ck_allocation_lease_s_positive"),
        CheckConstraint("attempts >= 0", name="ck_allocation_attempts_not_negative"),
    )
    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(default_factory=new_uuid, unique=True, index=True, max_length=36)
    owner_token_id: int = Field(foreign_key="apitoken.id", ondelete="CASCADE", index=True)
    constraints: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    image_id: int | None = Field(default=None, foreign_key="image.id", ondelete="RESTRICT")
    ssh_keys: list[str] = Field(default_factory=list, sa_type=JSON)
    #: Root-device hints; each key overrides the machine's own.
    root_device: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    user_data: str = Field(default="")
    state: str = Field(default="pending", index=True, max_length=16)
    machine_id: int | None = Field(
        default=None, foreign_key="machine.id", ondelete="SET NULL", index=True
    )
    failure_reason: str = Field(default="")
    idempotency_key: str | None = Field(default=None, max_length=128)
    request_hash: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: Requested lease length; expires_at is set from it when the machine is ready.
    lease_s: int = Field(default=3600, ge=1)
    ssh_user: str = Field(default="root", max_length=32)
    #: Deploy tries so far; machines that failed this allocation are not matched again.
    attempts: int = Field(default=0, ge=0)
    excluded_machine_ids: list[int] = Field(default_factory=list, sa_type=JSON)
