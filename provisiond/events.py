"""The event log: its only writer, the filtered newest-first read, and audit rows.

Every row of the append-only log is written here: :func:`record` for one event,
:func:`record_many` for a batch in one multi-row INSERT (power sync's drift, discovery).
Lifecycle transitions come through :func:`provisiond.lifecycle.advance`, which calls
:func:`record` in the transaction that changes the state. :func:`audit` adds
``kind="audit"`` rows for inventory edits so the log says who changed what (field
names only: values may be secret).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Session, and_, col, or_, select

from provisiond.errors import Problem, ValidationFailed
from provisiond.models import Event, Machine, utcnow
from provisiond.schemas.catalog import EventOut

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class EventKind(StrEnum):
    """What an event is about (``Event.kind``)."""

    #: A lifecycle state change, written with it by lifecycle.advance.
    TRANSITION = "transition"
    #: A deploy, inspection or release step (power-cycle, agent install, wipe).
    DEPLOY = "deploy"
    #: A boot phase seen on the network (DHCP, iPXE script, kernel, initrd).
    BOOT = "boot"
    #: A hardware report from the agent that changed or contradicted the record.
    INVENTORY = "inventory"
    #: A BMC found, enrolled or refused by a discovery sweep.
    DISCOVERY = "discovery"
    #: A power action or power state drift.
    POWER = "power"
    #: An allocation's own change (queued, expired, renewed, released).
    ALLOCATION = "allocation"
    #: Who changed what in the inventory, tokens or credentials.
    AUDIT = "audit"
    #: A NIC's cabling verdict changed (LLDP against its planned port), or a hold it set.
    CABLING = "cabling"


def _row(
    kind: EventKind,
    event: str,
    *,
    machine: Machine | None = None,
    machine_id: int | None = None,
    machine_name: str = "",
    allocation_id: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    actor: str = "",
    message: str = "",
    details: dict[str, Any] | None = None,
    request_id: str = "",
    phase_timings: dict[str, float] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    if machine is not None:
        machine_id, machine_name = machine.id, machine.name
    return {
        "at": at or utcnow(),
        "machine_id": machine_id,
        "machine_name": machine_name,
        "allocation_id": allocation_id,
        "kind": EventKind(kind).value,
        "event": event,
        "from_state": from_state,
        "to_state": to_state,
        "actor": actor,
        "message": message,
        "details": details or {},
        "request_id": request_id,
        "phase_timings": phase_timings or {},
    }


def record(
    session: Session, kind: EventKind, event: str, *, flush: bool = True, **fields: Any
) -> Event:
    """Append one event in the caller's transaction; the row is returned (with its id,
    unless ``flush=False`` leaves it to the caller's next flush, for a write loop over
    many machines). ``fields`` are the :class:`~provisiond.models.Event` columns, or
    ``machine=`` for the machine's id and name."""
    row = Event(**_row(kind, event, **fields))
    session.add(row)
    if flush:
        session.flush()
    return row


def record_many(session: Session, events: Iterable[tuple[EventKind, str, dict[str, Any]]]) -> int:
    """Append several events in one multi-row INSERT; returns how many."""
    batch = Batch()
    for kind, event, fields in events:
        batch.add(kind, event, **fields)
    return batch.write(session)


#: The event table's INSERT, built once (Core: parameters come with each execute).
_INSERT = Event.__table__.insert()  # type: ignore[attr-defined]


class Batch:
    """Events gathered while one transaction runs, written by one multi-row INSERT.

    >>> batch = Batch(); advance(..., batch=batch); ...; batch.write(session)

    A hot path (allocate, release) writes all its events in one statement instead of
    one INSERT each. Rows added after :meth:`write` wait for the next write.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: EventKind, event: str, **fields: Any) -> None:
        """Queue one event (the :class:`Event` columns, or ``machine=``)."""
        self.rows.append(_row(kind, event, **fields))

    def write(self, session: Session) -> int:
        rows, self.rows = self.rows, []
        if rows:  # a Core executemany on the table: no ORM bulk-insert machinery
            session.execute(_INSERT, rows)
        return len(rows)


def audit(
    session: Session,
    event: str,
    message: str,
    *,
    actor: str,
    request_id: str = "",
    machine: Machine | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    return record(
        session,
        EventKind.AUDIT,
        event,
        machine=machine,
        actor=actor,
        message=message,
        details=details,
        request_id=request_id,
    )


def _when(name: str, value: str | None, problems: list[Problem]) -> datetime | None:
    if value is None or value == "":
        return None
    # An unescaped "+" in a query string arrives as a space: "...T10:00:00 02:00".
    text = re.sub(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$", r"\1+\2", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        problems.append(Problem(name, f"{value!r} is not an ISO 8601 date-time"))
        return None


def _limit(value: str | None, problems: list[Problem]) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(Problem("limit", f"{value!r} is not a number from 1 to {MAX_LIMIT}"))
    return limit


def list_events(
    session: Session,
    *,
    machine: str | None = None,
    kind: str | None = None,
    event: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: str | None = None,
    order: str | None = None,
) -> list[EventOut]:
    """Events matching every filter given; newest first unless ``order="asc"``."""
    problems: list[Problem] = []
    start, end = _when("since", since, problems), _when("until", until, problems)
    count = _limit(limit, problems)
    if order not in (None, "", "asc", "desc"):
        problems.append(Problem("order", f"{order!r} is neither asc nor desc"))
    if start and end and start > end:
        problems.append(Problem("since", f"since ({since}) is after until ({until})"))
    if problems:
        raise ValidationFailed(
            problems,
            hint="e.g. ?machine=node1&kind=transition&since=2024-05-01T00:00:00Z&limit=50"
            "&order=asc (limit 1-1000, dates in ISO 8601, UTC when no offset)",
        )
    query = select(Event)
    if machine:
        # By name, plus the current machine of that name under any earlier name. Only
        # events since it was created: SQLite may give a new machine the id of a
        # deleted one, and the audit log keeps the deleted machine's events.
        current = session.exec(
            select(Machine.id, Machine.created_at).where(Machine.name == machine)
        ).first()
        query = query.where(
            or_(
                col(Event.machine_name) == machine,
                and_(col(Event.machine_id) == current[0], col(Event.at) >= current[1]),
            )
            if current is not None
            else col(Event.machine_name) == machine
        )
    if kind:
        query = query.where(Event.kind == kind)
    if event:
        query = query.where(Event.event == event)
    if start:
        query = query.where(col(Event.at) >= start)
    if end:
        query = query.where(col(Event.at) <= end)
    if order == "asc":
        query = query.order_by(col(Event.at).asc(), col(Event.id).asc())
    else:
        query = query.order_by(col(Event.at).desc(), col(Event.id).desc())
    return [_out(row) for row in session.exec(query.limit(count))]


def _out(row: Event) -> EventOut:
    return EventOut(
        id=row.id or 0,
        at=row.at,
        machine=row.machine_name,
        kind=row.kind,
        event=row.event,
        from_state=row.from_state,
        to_state=row.to_state,
        actor=row.actor,
        message=row.message,
        details=row.details,
        request_id=row.request_id,
        phase_timings=row.phase_timings,
    )
