"""Boot images: kernel, initrd and optional rootfs, or one whole-disk image, with checksums.

A ``disk`` image has ``disk`` (the served ``disk.raw.gz``; its sha256 is
``sha256["disk"]``), the format it was registered from, its raw size and the sha256
of the raw bytes (what the agent checks after decompressing), and the firmware it
boots. Live images leave those empty.

``configured_by`` says how a disk image's OS gets the deploy's SSH keys and phones
home: ``cloud-init`` (the deploy writes a NoCloud seed config into its root; the
image was checked for cloud-init at registration) or ``agent`` (the image does it by
itself, nothing is written). ``cloud_init``, ``os_family`` and ``os_version`` are what
registration found in the root file system ("" when not found or not checked).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger
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
    disk: str = Field(default="", max_length=255)
    source_format: str = Field(default="", max_length=8)  # raw | gzip | xz | zstd | qcow2
    virtual_size: int = Field(default=0, sa_type=BigInteger)  # bytes of raw disk
    min_disk_size: int = Field(default=0, sa_type=BigInteger)  # bytes the target needs
    raw_sha256: str = Field(default="", max_length=64)
    firmware: str = Field(default="both", max_length=8)  # bios | uefi | both
    configured_by: str = Field(default="cloud-init", max_length=16)  # cloud-init | agent
    cloud_init: str = Field(default="", max_length=255)  # e.g. /usr/bin/cloud-init
    os_family: str = Field(default="", max_length=32)  # os-release ID
    os_version: str = Field(default="", max_length=32)  # os-release VERSION_ID
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
