"""A machine's disks as the API and the inventory file take them.

A disk is a free-form mapping (name, model, rotational, ...), but its sizes are what
allocations match ``min_disk_gb`` against (:func:`provisiond.allocations.match.largest_disk_gb`),
so those must be numbers: a string or a negative size would make matching skip the
disk silently, and the request would wait for a machine it already has.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

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
