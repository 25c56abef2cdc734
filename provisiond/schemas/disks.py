"""A machine's disks as the API and the inventory file take them.

A disk is a free-form mapping (name, model, rotational, ...), but its sizes are what
allocations match ``min_disk_gb`` against (:func:`provisiond.allocations.match.largest_disk_gb`),
so those must be numbers: a string or a negative size would make matching skip the
disk silently, and the request would wait for a machine it already has.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

#: The disk keys allocations match ``min_disk_gb`` against.
DISK_SIZES = ("size_gb", "size_bytes")


def check_disk(disk: dict[str, Any]) -> dict[str, Any]:
    """Accept a disk whose sizes, when given, are numbers of at least 0."""
    for key in DISK_SIZES:
        value = disk.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(
                f"{key} must be a number of at least 0 (got {value!r}); "
                "allocations match min_disk_gb against it"
            )
    return disk


#: One disk in an inventory file (any JSON value besides the sizes).
Disk = Annotated[dict[str, Any], AfterValidator(check_disk)]


#: A size hint: GiB as an int, or a comparison such as ``">= 100"`` (Ironic's syntax).
SIZE_HINT = r"^\s*(>=|<=|==|!=|>|<)?\s*[0-9]{1,9}\s*$"
_TEXT = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RootDeviceHints(BaseModel):
    """Which disk a whole-disk image goes to, as Ironic's root-device hints say it.

    Every hint given must match; without hints the smallest disk that fits the image
    is used. ``size`` is in GiB (``100``, or ``">= 100"``); strings compare
    case-insensitively after trimming. The deploy ramdisk's image writer applies them
    (``provisiond/agent/image_writer.py``) and fails before writing when none matches.
    """

    model_config = ConfigDict(extra="forbid")

    name: (
        Annotated[str, StringConstraints(pattern=r"^(/dev/)?[A-Za-z0-9_.:/+-]{1,128}$")] | None
    ) = None
    size: (
        Annotated[int, Field(ge=1, le=10**9)]
        | Annotated[str, StringConstraints(pattern=SIZE_HINT)]
        | None
    ) = None
    serial: _TEXT | None = None
    wwn: _TEXT | None = None
    model: _TEXT | None = None
    vendor: _TEXT | None = None
    rotational: bool | None = None

    @field_validator("name")
    @classmethod
    def _no_parent(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError("a device name has no '..' in it (e.g. vda, /dev/sdb)")
        return value

    def given(self) -> dict[str, Any]:
        """The hints that were set, as stored on the machine or allocation."""
        return self.model_dump(exclude_none=True)


def check_hints(value: dict[str, Any]) -> dict[str, Any]:
    """Root-device hints as stored: validated, only the hints that were given."""
    return RootDeviceHints.model_validate(value).given()


#: Root-device hints as the API, the CLI and the inventory file take them.
Hints = Annotated[dict[str, Any], AfterValidator(check_hints)]
