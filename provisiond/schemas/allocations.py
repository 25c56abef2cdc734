"""Request and response shapes of the allocation API (``/api/v1/allocations``).

A request names constraints, an image, SSH keys and a lease::

    {"constraints": {"arch": "x86_64", "min_cpus": 2, "tags": ["ci"]},
     "image": "debian-12", "ssh_keys": ["ssh-ed25519 AAAA... me@laptop"],
     "lease": "2h"}

A lease is whole seconds (``7200``) or a duration string (``"2h"``, ``"1h30m"``,
``"90s"``, ``"1d"``); :func:`parse_lease` turns either into seconds and the service
bounds it by the caller's role. SSH keys are checked to be OpenSSH public keys
whose base64 blob names the same key type as the line does.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from provisiond.schemas.base import INT_MAX, Arch, Name, Strict, Tag
from provisiond.schemas.disks import Hints

SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_lease(value: Any) -> int:
    """``7200``, ``"7200"``, ``"2h"``, ``"1h30m"`` -> seconds (a positive int)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a lease is seconds or a duration like '2h' or '30m'")
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        if text.isdigit():
            seconds = int(text)
        else:
            match = _DURATION.match(text)
            if not text or match is None:
                raise ValueError(
                    f"{value!r} is not a duration; use seconds or e.g. '2h', '30m', '1h30m', '1d'"
                )
            seconds = sum(
                int(n) * mult
                for n, mult in zip(match.groups(), (86400, 3600, 60, 1), strict=True)
                if n
            )
    if seconds < 1:
        raise ValueError("a lease must be at least 1 second")
    if seconds > INT_MAX:
        raise ValueError(f"a lease must be at most {INT_MAX} seconds")
    return seconds


def format_lease(seconds: int) -> str:
    """7200 -> ``"2h"``; 5400 -> ``"1h30m"``; the inverse of :func:`parse_lease`."""
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def check_ssh_key(value: str) -> str:
    """Accept one OpenSSH public key line (``type base64 [comment]``); return it stripped."""
    line = value.strip()
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError(
            "not an OpenSSH public key: expected 'ssh-ed25519 AAAA... comment' "
            f"(types: {', '.join(sorted(SSH_KEY_TYPES))}); pass the .pub file, not the private key"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("the key's base64 part is not valid base64") from None
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if size != len(parts[0]) or blob[4 : 4 + size].decode(errors="replace") != parts[0]:
        raise ValueError(f"the key's base64 part does not encode a {parts[0]} key")
    return line


SshKey = Annotated[str, StringConstraints(max_length=16384), AfterValidator(check_ssh_key)]
Lease = Annotated[
    int,
    BeforeValidator(parse_lease),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "examples": ["2h"]}),
]


class Constraints(Strict):
    """What the machine must have. Tags are all-of; ``names`` is any-of."""

    arch: Arch | None = None
    min_cpus: int | None = Field(default=None, ge=1, le=100_000)
    min_ram_mib: int | None = Field(default=None, ge=1, le=INT_MAX)
    min_disk_gb: int | None = Field(default=None, ge=1, le=INT_MAX)
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    rack: Name | None = None
    site: str | None = Field(default=None, min_length=1, max_length=64)
    names: list[Name] = Field(default_factory=list, max_length=1024)

    @field_validator("tags", "names")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class AllocationIn(Strict):
    constraints: Constraints = Field(default_factory=Constraints)
    #: The image name (``GET /api/v1/images``).
    image: Name
    ssh_keys: list[SshKey] = Field(min_length=1, max_length=64)
    user_data: str = Field(default="", max_length=65536)
    #: Seconds or a duration (``"2h"``); the default is one hour, the maximum depends on role.
    lease: Lease = 3600
    ssh_user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    #: Root-device hints for a disk image; each overrides the machine's own hint.
    root_device: Hints = Field(default_factory=dict)


class RenewIn(Strict):
    #: The new lease, counted from now.
    lease: Lease


class AllocationOut(BaseModel):
    id: str
    #: One of :data:`provisiond.allocations.states.STATES`.
    state: str
    owner: str
    image: str | None
    constraints: dict[str, Any]
    machine: str | None
    address: str | None
    ssh_user: str
    host_key: str | None
    host_key_fingerprint: str | None
    lease_s: int
    attempts: int
    failure_reason: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
