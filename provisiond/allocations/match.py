"""Constraint matching for allocations: SQL filters, the atomic claim, and the 422 check.

Constraints become SQL conditions on ``machine`` wherever SQL can say them on both
databases: arch, CPUs, RAM, rack, site, names and tags (PostgreSQL: ``jsonb @>``;
SQLite: one ``json_each`` EXISTS per tag). Disk size is the exception: disks are
free-form JSON (``size_gb`` from inventory files, ``size_bytes`` from the agent), so
the candidates' disks are read and filtered in Python, and the ids that fit go into
the claim as ``id IN (...)``. Either way :func:`provisiond.lifecycle.claim_available`
is the single atomic UPDATE that takes the machine.

:func:`impossible` answers "could any machine ever satisfy this?" against the
whole inventory except retired machines, so the API can reject a request that
would otherwise wait forever. Hardware not yet inspected (unknown CPUs, RAM or
disks) counts as possibly fitting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, cast, exists, func, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from provisiond import events, lifecycle
from provisiond.config import StateTimeouts
from provisiond.errors import Problem, ValidationFailed
from provisiond.lifecycle import State
from provisiond.models import Allocation, Machine, Rack

GB = 1_000_000_000


def _tag_condition(tags: Sequence[str], dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return cast(col(Machine.tags), JSONB).contains(list(tags))
    clauses = []
    for tag in tags:
        each = func.json_each(col(Machine.tags)).table_valued("value")
        clauses.append(exists(select(1).select_from(each).where(each.c.value == tag)))
    return and_(*clauses)


def conditions(
    constraints: dict[str, Any],
    dialect: str,
    *,
    excluded: Sequence[int] = (),
    unknown_fits: bool = False,
) -> list[tuple[str, ColumnElement[bool]]]:
    """(constraint name, SQL condition) pairs; ``unknown_fits`` lets NULL hardware pass."""
    out: list[tuple[str, ColumnElement[bool]]] = []
    if constraints.get("names"):
        out.append(("names", col(Machine.name).in_(constraints["names"])))
    if constraints.get("rack"):
        racks = select(col(Rack.id)).where(col(Rack.name) == constraints["rack"])
        out.append(("rack", col(Machine.rack_id).in_(racks)))
    if constraints.get("site"):
        sites = select(col(Rack.id)).where(col(Rack.site) == constraints["site"])
        out.append(("site", col(Machine.rack_id).in_(sites)))
    if constraints.get("arch"):
        out.append(("arch", col(Machine.arch) == constraints["arch"]))
    if constraints.get("firmware"):  # a disk image that boots only under BIOS or UEFI
        # "" (not inspected since firmware was recorded) may fit: it is not excluded.
        out.append(("firmware", col(Machine.firmware).in_([constraints["firmware"], ""])))
    for name, column in (("min_cpus", Machine.cpus), ("min_ram_mib", Machine.ram_mib)):
        if constraints.get(name):
            fits = col(column) >= constraints[name]
            out.append((name, (fits | col(column).is_(None)) if unknown_fits else fits))
    if constraints.get("tags"):
        out.append(("tags", _tag_condition(constraints["tags"], dialect)))
    if excluded:
        out.append(("excluded", col(Machine.id).not_in(list(excluded))))
    return out


def largest_disk_gb(disks: list[dict[str, Any]]) -> float | None:
    """The biggest disk in GB (10^9 bytes), or None when no disk states a numeric size."""
    sizes: list[float] = []
    for disk in disks:
        gb, size_bytes = disk.get("size_gb"), disk.get("size_bytes")
        if isinstance(gb, int | float) and not isinstance(gb, bool):
            sizes.append(float(gb))
        elif isinstance(size_bytes, int | float) and not isinstance(size_bytes, bool):
            sizes.append(float(size_bytes) / GB)
    return max(sizes) if sizes else None


def _disk_fits(disks: list[dict[str, Any]], min_gb: int, unknown_fits: bool) -> bool:
    largest = largest_disk_gb(disks)
    return unknown_fits if largest is None else largest >= min_gb


def claim(
    session: Session,
    allocation: Allocation,
    *,
    dialect: str,
    actor: str,
    timeouts: StateTimeouts,
    batch: events.Batch,
    request_id: str = "",
    details: dict[str, Any] | None = None,
    unless_pending: bool = False,
) -> lifecycle.Claimed | None:
    """Take one available machine that fits ``allocation`` (atomically), or None.

    ``unless_pending``: take none while any allocation is pending (the request path:
    the queue's walk decides the order then), checked in the same statement.
    """
    constraints = allocation.constraints
    excluded = allocation.excluded_machine_ids

    def where() -> list[ColumnElement[bool]]:
        out = [c for _, c in conditions(constraints, dialect, excluded=excluded)]
        out.append(col(Machine.hold_reason) == "")  # never a held machine (see _held)
        if unless_pending:
            out.append(~exists(select(1).where(col(Allocation.state) == "pending")))
        return out

    # The statement is kept per constraints (their values are in it), not per request:
    # the conditions are built only when it is not kept yet.
    key: tuple[str, ...] | None = (
        dialect,
        json.dumps(constraints, sort_keys=True),
        json.dumps(sorted(excluded)),
        str(unless_pending),
    )
    build: Callable[[], Sequence[ColumnElement[bool]]] = where
    min_disk = constraints.get("min_disk_gb")
    if min_disk:
        fitting = where()
        rows = session.execute(
            select(col(Machine.id), col(Machine.disks)).where(
                col(Machine.state) == State.AVAILABLE.value, *fitting
            )
        ).all()
        ids = [mid for mid, disks in rows if _disk_fits(disks, min_disk, unknown_fits=False)]
        if not ids:
            return None
        fitting.append(col(Machine.id).in_(ids))
        build, key = (lambda: fitting), None  # the ids that fit change from claim to claim
    return lifecycle.claim_available(
        session,
        build,
        actor=actor,
        allocation_uuid=allocation.uuid,
        batch=batch,
        timeouts=timeouts,
        request_id=request_id,
        details=details,
        cache_key=key,
    )


def _describe(name: str, constraints: dict[str, Any]) -> str:
    value = constraints[name]
    if name == "min_disk_gb":
        return f"a disk of at least {value} GB"
    if name == "tags":
        return f"all of the tags {', '.join(value)}"
    if name == "names":
        return f"one of the names {', '.join(value)}"
    labels = {
        "min_cpus": "at least {} CPUs",
        "min_ram_mib": "at least {} MiB of RAM",
        "firmware": "{} firmware (the image boots only that way)",
    }
    return labels.get(name, name + " {}").format(value)


def impossible(session: Session, constraints: dict[str, Any], dialect: str) -> None:
    """Raise a 422 naming the first constraint no non-retired machine could ever meet."""
    base: list[ColumnElement[bool]] = [col(Machine.state) != State.RETIRED.value]
    steps = conditions(constraints, dialect, unknown_fits=True)
    if constraints.get("min_disk_gb"):
        steps.append(("min_disk_gb", true()))
    applied: list[str] = []
    for name, condition in steps:
        if name == "min_disk_gb":
            rows = session.execute(select(col(Machine.disks)).where(*base)).scalars().all()
            fits = any(_disk_fits(d, constraints[name], unknown_fits=True) for d in rows)
        else:
            base.append(condition)
            fits = (
                session.execute(select(col(Machine.id)).where(*base).limit(1)).first() is not None
            )
        if not fits:
            alone = not applied or not _alone_fits(session, name, constraints, dialect)
            what = _describe(name, constraints)
            message = (
                f"no machine in the inventory (other than retired ones) has {what}"
                if alone
                else f"no machine has {what} together with "
                + ", ".join(_describe(a, constraints) for a in applied)
            )
            raise ValidationFailed(
                [Problem(f"constraints.{name}", message)],
                hint="relax this constraint; 'provisiond machines list' shows the inventory",
            )
        applied.append(name)
    _held(session, base, "constraints.names" if constraints.get("names") else "constraints")


def _held(session: Session, where: list[ColumnElement[bool]], path: str) -> None:
    """Raise a 422 naming the holds when every machine that could fit is held (a hold
    is set by a check such as the cabling check and cleared when it passes again)."""
    free = select(col(Machine.id)).where(*where, col(Machine.hold_reason) == "").limit(1)
    if session.execute(free).first() is not None:
        return
    held = session.execute(
        select(col(Machine.name), col(Machine.hold_reason))
        .where(*where)
        .order_by(col(Machine.name))
        .limit(5)
    ).all()
    if not held:
        return
    which = "; ".join(f"{name} is held ({reason})" for name, reason in held)
    raise ValidationFailed(
        [Problem(path, f"every machine that fits is held out of allocation: {which}")],
        hint="a cabling hold clears when the check passes: fix the cabling (or the plan, "
        "'provisiond cabling import'), re-inspect or run 'provisiond cabling check'",
    )


def _alone_fits(session: Session, name: str, constraints: dict[str, Any], dialect: str) -> bool:
    only = {name: constraints[name]}
    if name == "min_disk_gb":
        rows = session.execute(
            select(col(Machine.disks)).where(col(Machine.state) != State.RETIRED.value)
        ).scalars()
        return any(_disk_fits(d, constraints[name], unknown_fits=True) for d in rows)
    where = [c for _, c in conditions(only, dialect, unknown_fits=True)]
    return (
        session.execute(
            select(col(Machine.id))
            .where(col(Machine.state) != State.RETIRED.value, *where)
            .limit(1)
        ).first()
        is not None
    )
