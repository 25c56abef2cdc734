"""Listing machines: pages behind an opaque cursor, and every machine streamed as NDJSON.

``GET /api/v1/machines`` answers one page, a JSON array of at most ``limit`` machines
(1-1000, default 500) ordered by name. When more follow, the answer carries
``Link: <...&cursor=...>; rel="next"`` (RFC 8288, as GitHub's API does); the last page
has no ``next`` link. The cursor is opaque to clients (the page's last name,
base64url-encoded). Paging is by key (``name > after``), not by offset, so a machine
that exists for the whole walk is listed exactly once however many machines are added
or removed between pages; one created behind the cursor shows up on the next walk.

``?stream=true`` sends every matching machine as NDJSON (one machine per line), built
a chunk at a time, each chunk from its own short read session: neither the daemon nor
the database holds the whole list, and a slow reader holds no connection. An error
after the first line travels in the stream as a last line ``{"error": {...}}``.

Pages are built from plain rows, not ORM objects (no identity map, no per-object
state), and the NICs, BMCs, racks, credential sets and switch ports of a page come in
one query each, whatever the page size.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Select, Table, cast, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from provisiond import lifecycle
from provisiond.db import Database
from provisiond.errors import Problem, ProvisiondError, ValidationFailed
from provisiond.lifecycle import State
from provisiond.logging import get_logger
from provisiond.models import Bmc, CredentialSet, Machine, Nic, Rack, Switch, SwitchPort
from provisiond.schemas.resources import MachineOut

log = get_logger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
#: Machines per chunk of a streamed export (one read session each).
EXPORT_CHUNK = 500
_CURSOR_PREFIX = "m1:"
CURSOR_HINT = (
    'a cursor comes from the Link header (rel="next") of the page before; '
    "start again without one to read from the first machine"
)

_MACHINES: Table = Machine.__table__  # type: ignore[attr-defined]
_NICS: Table = Nic.__table__  # type: ignore[attr-defined]
_BMCS: Table = Bmc.__table__  # type: ignore[attr-defined]
PAGE = TypeAdapter(list[MachineOut])


@dataclass(frozen=True)
class Query:
    """A checked listing request: filter conditions, page size and where to start."""

    conditions: tuple[ColumnElement[bool], ...] = ()
    limit: int = DEFAULT_LIMIT
    after: str | None = None


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + name).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """The name a cursor continues after, or None when it is not one of ours."""
    if len(cursor) > 128:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    name = raw.removeprefix(_CURSOR_PREFIX)
    # Any name up to the column's 64 characters is a position; NUL never is (PostgreSQL).
    if not raw.startswith(_CURSOR_PREFIX) or len(name) > 64 or "\x00" in name:
        return None
    return name


def _has_tag(tag: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return cast(col(Machine.tags), JSONB).contains([tag])
    each = func.json_each(col(Machine.tags)).table_valued("value")
    return exists(select(1).select_from(each).where(each.c.value == tag))


def filters(
    dialect: str,
    *,
    state: str | None = None,
    rack_id: int | None = None,
    arch: str | None = None,
    tag: str | None = None,
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a machine filter (the API's list and the console's):
    an empty value or a ``None`` rack id filters nothing."""
    conditions: list[ColumnElement[bool]] = []
    if state:
        conditions.append(col(Machine.state) == state)
    if rack_id is not None:
        conditions.append(col(Machine.rack_id) == rack_id)
    if arch:
        conditions.append(col(Machine.arch) == arch)
    if tag:
        conditions.append(_has_tag(tag, dialect))
    return conditions


def parse(
    session: Session,
    *,
    state: str | None = None,
    rack: str | None = None,
    tag: str | None = None,
    arch: str | None = None,
    limit: str | None = None,
    cursor: str | None = None,
    stream: bool = False,
) -> Query:
    """Check the query parameters; every problem at once, as one 422 with hints."""
    problems: list[Problem] = []
    hints: list[str] = []
    if state and state not in {s.value for s in State}:
        problems.append(Problem("state", f"{state!r} is not a machine state"))
        hints.append("states: " + ", ".join(s.value for s in State if s is not State.NEW))
    rack_id = None
    if rack:
        rack_id = session.execute(select(col(Rack.id)).where(col(Rack.name) == rack)).scalar()
        if rack_id is None:
            problems.append(Problem("rack", f"no rack named {rack!r}"))
            hints.append("list racks to see the names")
    conditions = filters(
        session.get_bind().dialect.name, state=state, rack_id=rack_id, arch=arch, tag=tag
    )
    size = DEFAULT_LIMIT
    if limit not in (None, ""):
        size = int(limit) if limit.isascii() and limit.isdigit() and len(limit) <= 6 else 0
        if not 1 <= size <= MAX_LIMIT:
            problems.append(Problem("limit", f"{limit!r} is not a number from 1 to {MAX_LIMIT}"))
            hints.append(f"limit is the page size: 1 to {MAX_LIMIT}, {DEFAULT_LIMIT} if left out")
    after = None
    if cursor not in (None, ""):
        after = decode_cursor(cursor)
        if after is None:
            problems.append(Problem("cursor", "not a cursor this API gave out"))
            hints.append(CURSOR_HINT)
    if stream and (limit or cursor):
        why = "stream=true sends every matching machine; it takes no limit or cursor"
        problems.append(Problem("stream", why))
        hints.append("leave out limit and cursor, or page without stream=true")
    if problems:
        raise ValidationFailed(problems, hint="; ".join(hints))
    return Query(tuple(conditions), size, after)


def _dicts(session: Session, stmt: Select[Any]) -> list[dict[str, Any]]:
    """The rows of ``stmt`` as fresh dicts (cheaper than result mappings, and ours to edit)."""
    result = session.execute(stmt)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


def page(session: Session, query: Query) -> tuple[list[MachineOut], str | None]:
    """One page of machines by name, and the cursor of the next (None on the last page)."""
    stmt = select(*_MACHINES.columns).where(*query.conditions)
    if query.after is not None:
        stmt = stmt.where(_MACHINES.c.name > query.after)
    # One row past the page tells whether another page follows (no empty last page).
    found = _dicts(session, stmt.order_by(_MACHINES.c.name).limit(query.limit + 1))
    more = len(found) > query.limit
    found = found[: query.limit]
    nics: dict[int, list[dict[str, Any]]] = defaultdict(list)
    bmcs: dict[int, dict[str, Any]] = {}
    ids = [row["id"] for row in found]
    if ids:
        stmt = select(*_NICS.columns).where(_NICS.c.machine_id.in_(ids)).order_by(_NICS.c.id)
        for nic in _dicts(session, stmt):
            nics[nic["machine_id"]].append(nic)
        for bmc in _dicts(session, select(*_BMCS.columns).where(_BMCS.c.machine_id.in_(ids))):
            bmcs[bmc["machine_id"]] = bmc
    outs = views(session, [(row, nics.get(row["id"], []), bmcs.get(row["id"])) for row in found])
    return outs, (encode_cursor(outs[-1].name) if more else None)


def export(db: Database, query: Query, chunk: int | None = None) -> Iterator[bytes]:
    """NDJSON of every machine ``query`` matches, ``chunk`` (:data:`EXPORT_CHUNK`)
    machines per read session."""
    chunk = chunk or EXPORT_CHUNK
    after = query.after
    try:
        while True:
            with db.read_session() as session:
                outs, following = page(session, Query(query.conditions, chunk, after))
            if outs:
                yield b"".join(out.__pydantic_serializer__.to_json(out) + b"\n" for out in outs)
            if following is None:
                return
            after = outs[-1].name
    except ProvisiondError as exc:  # headers are sent: the error travels in the stream
        yield _error_line(exc.to_dict())
    except Exception:
        log.exception("machine_export_failed")
        yield _error_line(
            {
                "code": "internal",
                "message": "the machine export failed part way",
                "hint": "see the daemon's log, then try again (or read the list a page "
                "at a time, without stream=true)",
            }
        )


def _error_line(error: dict[str, Any]) -> bytes:
    return TypeAdapter(dict[str, Any]).dump_json({"error": error}) + b"\n"


#: (machine columns, its NICs' columns, its BMC's columns or None) as fresh dicts (result
#: rows or ORM dumps alike); :func:`views` edits them in place.
Parts = tuple[dict[str, Any], Sequence[dict[str, Any]], dict[str, Any] | None]


def views(session: Session, machines: Sequence[Parts]) -> list[MachineOut]:
    """API views of ``machines``; rack, credential-set and switch-port names are looked
    up in one query each for all of them."""
    rack_ids = {m["rack_id"] for m, _n, _b in machines if m["rack_id"] is not None}
    cred_ids = {b["credential_set_id"] for _m, _n, b in machines if b and b["credential_set_id"]}
    port_ids = {n["switch_port_id"] for _m, ns, _b in machines for n in ns if n["switch_port_id"]}
    racks: dict[int | None, str] = {}
    if rack_ids:
        found = select(col(Rack.id), col(Rack.name)).where(col(Rack.id).in_(rack_ids))
        racks = {rid: name for rid, name in session.execute(found)}
    creds: dict[int | None, str] = {}
    if cred_ids:
        sets = select(col(CredentialSet.id), col(CredentialSet.name)).where(
            col(CredentialSet.id).in_(cred_ids)
        )
        creds = {cid: name for cid, name in session.execute(sets)}
    ports: dict[int | None, str] = {}
    if port_ids:
        ports = {
            pid: f"{switch}/{port}"
            for pid, switch, port in session.execute(
                select(col(SwitchPort.id), col(Switch.name), col(SwitchPort.name))
                .join(Switch, col(Switch.id) == col(SwitchPort.switch_id))
                .where(col(SwitchPort.id).in_(port_ids))
            )
        }
    allowed: dict[str, list[str]] = {}
    outs = []
    for m, nics, bmc in machines:
        m.pop("agent_token_hash", None)  # never leaves the daemon
        m["rack"] = racks.get(m["rack_id"])
        state = m["state"]
        if state not in allowed:
            allowed[state] = lifecycle.allowed_events(state)
        m["allowed_events"] = allowed[state]
        for nic in nics:
            nic["switch_port"] = ports.get(nic["switch_port_id"])
        m["nics"] = nics
        if bmc is not None:
            bmc["password_set"] = bool(bmc.pop("secret_encrypted", None))
            bmc["credential_set"] = creds.get(bmc["credential_set_id"])
        m["bmc"] = bmc
        outs.append(MachineOut.model_validate(m))
    return outs
