from __future__ import annotations

from fastapi import APIRouter

import provisiond.events as events
from provisiond.api.deps import CI, ReadSession
from provisiond.schemas.base import Key
from provisiond.schemas.catalog import EventOut

router = APIRouter(prefix="/api/v1/events", tags=["events"])


@router.get("", response_model=list[EventOut])
def list_events(
    _: CI,
    session: ReadSession,
    machine: Key | None = None,
    kind: Key | None = None,
    event: Key | None = None,
    since: Key | None = None,
    until: Key | None = None,
    limit: Key | None = None,
    order: Key | None = None,
) -> list[EventOut]:
    """Newest first (``order=asc`` for oldest first); ``limit`` 1-1000, default 100."""
    return events.list_events(
        session,
        machine=machine,
        kind=kind,
        event=event,
        since=since,
        until=until,
        limit=limit,
        order=order,
    )
