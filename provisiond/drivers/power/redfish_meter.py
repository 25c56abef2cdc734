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

from collections.abc import Callable
from typing import Any

from provisiond.drivers.power.base import BmcUnsupported

ENVIRONMENT = "environment"
POWER = "power"
#: A BMC with no power meter: (no url, no shape); the driver then stops looking.
NONE: tuple[str, str] = ("", "")


def _link(resource: Any, name: str) -> str:
    value = resource.get(name) if isinstance(resource, dict) else None
    return str(value.get("@odata.id") or "") if isinstance(value, dict) else ""


def chassis_url(system: dict[str, Any], get: Callable[[str], Any]) -> str:
    links = system.get("Links", {}).get("Chassis") or []
    if links and isinstance(links[0], dict) and links[0].get("@odata.id"):
        return str(links[0]["@odata.id"])
    members = get("/redfish/v1/Chassis").get("Members") or []
    return str(members[0].get("@odata.id") or "") if len(members) == 1 else ""


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
    """The reading in ``body`` of the given shape; None when it carries none."""
    if not isinstance(body, dict):
        return None
    value: Any
    if shape == ENVIRONMENT:
        value = (body.get("PowerWatts") or {}).get("Reading")
    else:
        controls = body.get("PowerControl") or [{}]
        value = controls[0].get("PowerConsumedWatts") if isinstance(controls[0], dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return round(value)
