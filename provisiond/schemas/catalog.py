"""Request and response shapes of the catalog and the audit side: images, events, API
tokens and BMC credential sets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    StringConstraints,
)

from provisiond.schemas.base import (
    INT_MAX,
    Arch,
    ImagePath,
    Name,
    Out,
    Patch,
    Sha256,
    Strict,
)

# --- images ------------------------------------------------------------------


ImageKind = Literal["live", "disk"]
#: Checksums by file role.
Sums = dict[Literal["kernel", "initrd", "rootfs"], Sha256]
OsTemplate = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9._/-]*$")]


Firmware = Literal["bios", "uefi", "both"]
#: How a deployed disk image gets its SSH keys and phones home (README, "Disk images").
ConfiguredBy = Literal["cloud-init", "agent"]
OsToken = Annotated[str, StringConstraints(max_length=32, pattern=r"^[a-z0-9._-]*$")]
SourceFormat = Literal["raw", "gzip", "xz", "zstd", "qcow2"]


class ImageIn(Strict):
    name: Name
    arch: Arch = "x86_64"
    kind: ImageKind = "live"
    kernel: ImagePath = Field(min_length=1)
    initrd: ImagePath = Field(min_length=1)
    rootfs: ImagePath = ""
    kernel_args: str = Field(default="", max_length=1024)
    os_template: OsTemplate = ""
    sha256: Sums = Field(default_factory=dict)


class DiskImageIn(Strict):
    """A whole-disk image as ``images add --disk`` records it (no kernel or initrd)."""

    name: Name
    arch: Arch = "x86_64"
    kind: Literal["disk"] = "disk"
    disk: ImagePath = Field(min_length=1)
    source_format: SourceFormat
    virtual_size: int = Field(gt=0)
    min_disk_size: int = Field(gt=0)
    raw_sha256: Sha256
    sha256: dict[Literal["disk"], Sha256]
    os_template: OsTemplate = ""
    firmware: Firmware = "both"
    configured_by: ConfiguredBy = "cloud-init"
    cloud_init: str = Field(default="", max_length=255)
    os_family: OsToken = ""
    os_version: OsToken = ""
    kernel: Literal[""] = ""
    initrd: Literal[""] = ""


class ImagePatch(Patch):
    name: Name | None = None
    arch: Arch | None = None
    kind: ImageKind | None = None
    kernel: ImagePath | None = Field(default=None, min_length=1)
    initrd: ImagePath | None = Field(default=None, min_length=1)
    rootfs: ImagePath | None = None
    kernel_args: str | None = Field(default=None, max_length=1024)
    os_template: OsTemplate | None = None
    sha256: Sums | None = None


class ImageOut(Out):
    name: str
    arch: str
    kind: str
    kernel: str
    initrd: str
    rootfs: str
    kernel_args: str
    os_template: str
    sha256: dict[str, str]
    disk: str
    source_format: str
    virtual_size: int
    min_disk_size: int
    raw_sha256: str
    firmware: str
    configured_by: str
    cloud_init: str
    os_family: str
    os_version: str
    created_at: datetime


# --- events ------------------------------------------------------------------


class EventOut(Out):
    id: int
    at: datetime
    machine: str
    kind: str
    event: str
    from_state: str | None
    to_state: str | None
    actor: str
    message: str
    details: dict[str, Any]
    request_id: str
    phase_timings: dict[str, float]


# --- tokens and credential sets ----------------------------------------------


class TokenIn(Strict):
    name: Name
    role: Literal["admin", "operator", "ci"] = "ci"
    quota_machines: int | None = Field(default=None, ge=0, le=INT_MAX)
    #: ``"90d"`` (units s, m, h, d, w) or an ISO 8601 date; None: never expires.
    expires: str | None = Field(default=None, min_length=1, max_length=64)


class TokenOut(Out):
    name: str
    role: str
    prefix: str
    quota_machines: int | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenOut):
    #: The clear token; this response is the only time it is shown.
    token: str


class CredentialIn(Strict):
    name: Name
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=256)


class CredentialPatch(Patch):
    username: str | None = Field(default=None, min_length=1, max_length=64)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=256)


class CredentialOut(Out):
    name: str
    username: str
    password_set: bool
    created_at: datetime
