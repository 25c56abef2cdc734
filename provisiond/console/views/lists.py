"""The allocation and image lists.

Allocations are the API's own list (:func:`provisiond.allocations.views.list_allocations`):
newest first, the same state check, and its visibility rule (a ci token sees only its
own); owners, images and machines come in one read each, not one per row. Images are
few: one read of the table by name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlmodel import Session, col

from provisiond.allocations.states import STATES
from provisiond.allocations.views import list_allocations
from provisiond.console.auth import ConsoleUser
from provisiond.errors import Problem, ValidationFailed
from provisiond.models import Image

ALLOCATIONS = 200
IMAGES = 1000


def human_bytes(size: float) -> str:
    """``"1.5 GB"``: decimal units, as disks are sold and allocations match them."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover  (the loop returns at TB)


def lease_left(expires_at: datetime | None, now: datetime) -> str:
    """``"1h 05m"`` until ``expires_at``; "expired" past it; "" without one."""
    if expires_at is None:
        return ""
    seconds = int((expires_at - now).total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {rest % 60:02d}s"


def allocations(session: Session, user: ConsoleUser, state: str) -> dict[str, Any]:
    state = state.strip()
    if state and state not in STATES:
        raise ValidationFailed(
            [Problem("state", f"{state[:32]!r} is not an allocation state")],
            hint="states: " + ", ".join(STATES),
        )
    outs = list_allocations(session, user.token, state=state or None, limit=ALLOCATIONS)
    now = datetime.now(UTC)
    rows = []
    for out in outs:
        live = out.state in ("pending", "deploying", "ready")
        rows.append(
            {
                "uuid": out.id,
                "short": out.id[:8],
                "state": out.state,
                "machine": out.machine or "",
                "machine_href": "/ui/machines/" + quote(out.machine, safe="")
                if out.machine
                else "",
                "owner": out.owner,
                "image": out.image or "",
                "created_at": out.created_at,
                "expires_at": out.expires_at,
                "lease_left": lease_left(out.expires_at, now) if live else "",
                "failure_reason": out.failure_reason,
            }
        )
    return {
        "rows": rows,
        "state": state,
        "states": list(STATES),
        "limit": ALLOCATIONS,
        "own_only": not user.can_act,
    }


def images(session: Session, user: ConsoleUser) -> dict[str, Any]:
    del user  # every role may read the image catalogue
    found = session.execute(
        select(
            col(Image.name),
            col(Image.kind),
            col(Image.arch),
            col(Image.firmware),
            col(Image.os_family),
            col(Image.os_version),
            col(Image.configured_by),
            col(Image.virtual_size),
            col(Image.created_at),
        )
        .order_by(col(Image.name))
        .limit(IMAGES)
    ).all()
    rows = []
    for name, kind, arch, firmware, family, version, configured_by, size, created in found:
        disk = kind == "disk"
        rows.append(
            {
                "name": name,
                "kind": kind,
                "arch": arch,
                "firmware": firmware,
                "os": " ".join(p for p in (family, version) if p),
                "configured_by": configured_by if disk else "",
                "size": human_bytes(size) if disk and size else "",
                "created_at": created,
            }
        )
    return {"rows": rows, "limit": IMAGES}
