"""Short texts the overview builds from stored JSON: constraints, failures, cabling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_text(value: Any) -> str:
    """A stored JSON value as text: ``""`` for None."""
    return "" if value is None else str(value)


def wants(constraints: Any) -> str:
    """An allocation's constraints in a few words ("any machine" when none)."""
    if not isinstance(constraints, Mapping):
        return "any machine"
    parts: list[str] = []
    labels = (
        ("arch", "{}"),
        ("min_cpus", "\u2265{} CPUs"),
        ("min_ram_mib", "\u2265{} MiB RAM"),
        ("min_disk_gb", "\u2265{} GB disk"),
        ("rack", "rack {}"),
        ("site", "site {}"),
    )
    for key, label in labels:
        if constraints.get(key) not in (None, ""):
            parts.append(label.format(as_text(constraints[key])))
    tags = constraints.get("tags")
    if isinstance(tags, list) and tags:
        parts.append("tags " + ", ".join(as_text(t) for t in tags))
    names = constraints.get("names")
    if isinstance(names, list) and names:
        shown = ", ".join(as_text(n) for n in names[:3])
        parts.append("one of " + shown + (f" (+{len(names) - 3})" if len(names) > 3 else ""))
    return "; ".join(parts) or "any machine"


def failure_text(last_error: Any, deploy_reason: str | None) -> tuple[str, str]:
    """(reason, phase) of a failed machine: ``last_error``'s message or reason as
    :func:`provisiond.lifecycle.advance` wrote it, else the newest deploy's."""
    if isinstance(last_error, Mapping):
        for key in ("message", "reason"):
            text = as_text(last_error.get(key)).strip()
            if text:
                return text, as_text(last_error.get("phase"))
        phase = as_text(last_error.get("phase"))
    else:
        phase = ""
        if isinstance(last_error, str) and last_error.strip():
            return last_error.strip(), phase
    return (deploy_reason or "").strip() or "no reason recorded", phase


def _neighbour(side: Any, keys: tuple[str, ...]) -> str:
    if not isinstance(side, Mapping):
        return ""
    return next((as_text(side.get(k)) for k in keys if side.get(k)), "")


def cabling_text(detail: Any) -> tuple[str, str, str, str]:
    """(expected, seen, reason, note) of a NIC's cabling verdict (the detail
    :mod:`provisiond.cabling.check` writes); the note names a swap's other NIC."""
    if not isinstance(detail, Mapping):
        return "", "", "", ""
    expected_side, actual = detail.get("expected"), detail.get("actual")
    expected = ""
    if isinstance(expected_side, Mapping) and expected_side.get("switch"):
        expected = f"{as_text(expected_side.get('switch'))}/{as_text(expected_side.get('port'))}"
    seen = ""
    if isinstance(actual, Mapping):
        switch = _neighbour(actual, ("switch", "system_name", "chassis_id")) or "?"
        port = _neighbour(actual, ("port", "port_id", "port_description")) or "?"
        seen = f"{switch}/{port}"
    note = ""
    if detail.get("swapped_with"):
        note = f"swapped with {as_text(detail['swapped_with'])}"
    elif detail.get("planned_for"):
        note = f"on the port planned for {as_text(detail['planned_for'])}"
    return expected, seen, as_text(detail.get("reason")), note
