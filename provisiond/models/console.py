"""Console sessions: a signed cookie names one row; signing out deletes it."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, utcnow


class ConsoleSession(SQLModel, table=True):
    """One signed-in browser. The cookie carries a random id (and its HMAC); only the
    id's SHA-256 is stored, so a database dump signs nobody in. The API token the
    operator signed in with is referenced, never stored: revoking or expiring the
    token ends its sessions too."""

    id: int | None = Field(default=None, primary_key=True)
    sid_hash: str = Field(unique=True, index=True, max_length=64)
    token_id: int = Field(foreign_key="apitoken.id", ondelete="CASCADE", index=True)
    #: The synchronizer token every console form carries (CSRF).
    csrf: str = Field(max_length=64)
    #: One message for the next page (an action's result), shown once.
    flash: str = Field(default="", max_length=2048)
    flash_kind: str = Field(default="", max_length=8)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
