"""Boot images: kernel, initrd and optional rootfs, with their checksums."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from provisiond.models.base import UTCDateTime, utcnow


class Image(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    arch: str = Field(default="x86_64", max_length=16)
    kind: str = Field(default="live", max_length=8)  # live | disk
    kernel: str = Field(max_length=255)
    initrd: str = Field(max_length=255)
    rootfs: str = Field(default="", max_length=255)
    kernel_args: str = Field(default="", max_length=1024)
    os_template: str = Field(default="", max_length=64)
    sha256: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
