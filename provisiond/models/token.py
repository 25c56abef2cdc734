"""API tokens, stored as SHA-256 hashes, with a role."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, utcnow


class ApiToken(SQLModel, table=True):
    __table_args__ = (
        CheckConstraint("quota_machines >= 0", name="ck_apitoken_quota_machines_not_negative"),
    )
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    role: str = Field(max_length=16)  # admin | operator | ci
    token_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=16)
    quota_machines: int | None = Field(default=None, ge=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Refused from this moment on (401 token_expired); None: never expires.
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
