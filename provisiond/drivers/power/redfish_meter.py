"""Where a Redfish BMC reports the machine's power draw, and the reading itself.

Two shapes, newest first:

- ``Chassis/{id}/EnvironmentMetrics``: ``PowerWatts.Reading`` (Redfish 2020.4 and later);
- ``Chassis/{id}/Power``: ``PowerControl[0].PowerConsumedWatts`` (deprecated, but what
  most BMCs in service still serve).

The chassis is the system's ``Links.Chassis[0]`` (or the only member of
/redfish/v1/Chassis). Its own ``EnvironmentMetrics`` and ``Power`` links are followed
when it has them; otherwise the conventional paths under the chassis are tried. The
first that gives a number is remembered by the driver, so a reading is one GET.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from provisiond.drivers.power.base import BmcUnsupported

ENVIRONMENT = "environment"
POWER = "power"
#: A BMC with no power meter: (no url, no shape); the driver then stops looking.
NONE: tuple[str, str] = ("", "")
#: No one machine draws more: a larger figure is a broken meter (and would not fit the column).
MAX_WATTS = 100_000


def _link(resource: Any, name: str) -> str:
    value = resource.get(name) if isinstance(resource, dict) else None
    return str(value.get("@odata.id") or "") if isinstance(value, dict) else ""


def chassis_url(system: dict[str, Any], get: Callable[[str], Any]) -> str:
    """The system's chassis URL, or "" when neither its links nor the collection say.

    Any shape the BMC sends is taken: ``Links`` null or not an object, members that are
    not objects... each only means "no chassis found" (then no meter), never an error.
    """
    links = system.get("Links")
    chassis = links.get("Chassis") if isinstance(links, dict) else None
    if isinstance(chassis, list) and chassis:
        first = _id(chassis[0])
        if first:
            return first
    collection = get("/redfish/v1/Chassis")
    members = collection.get("Members") if isinstance(collection, dict) else None
    return _id(members[0]) if isinstance(members, list) and len(members) == 1 else ""


def _id(member: Any) -> str:
    value = member.get("@odata.id") if isinstance(member, dict) else None
    return value if isinstance(value, str) else ""


def find(system: dict[str, Any], get: Callable[[str], Any]) -> tuple[str, str]:
    """(url, shape) of the first meter that reads a number, or :data:`NONE`.

    ``get(url)`` is the driver's classified GET; a 404 (BmcUnsupported) for one
    candidate only moves on to the next.
    """
    chassis = chassis_url(system, get)
    if not chassis:
        return NONE
    try:
        resource = get(chassis)
    except BmcUnsupported:  # a system linked to a chassis the BMC does not serve
        return NONE
    candidates = [
        (_link(resource, "EnvironmentMetrics") or f"{chassis}/EnvironmentMetrics", ENVIRONMENT),
        (_link(resource, "Power") or f"{chassis}/Power", POWER),
    ]
    for url, shape in candidates:
        try:
            body = get(url)
        except BmcUnsupported:
            continue
        if watts(body, shape) is not None:
            return url, shape
    return NONE


def watts(body: Any, shape: str) -> int | None:
    """The reading in ``body`` of the given shape; None when it carries none, or carries
    it in a shape other than the schema's (a dict ``PowerControl``, a string reading...)."""
    if not isinstance(body, dict):
        return None
    value: Any = None
    if shape == ENVIRONMENT:
        reading = body.get("PowerWatts")
        value = reading.get("Reading") if isinstance(reading, dict) else None
    else:
        controls = body.get("PowerControl")
        first = controls[0] if isinstance(controls, list) and controls else None
        value = first.get("PowerConsumedWatts") if isinstance(first, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and 0 <= value <= MAX_WATTS):  # NaN, or not one machine's
        return None
    return round(value)
