"""The machine list: filters, a search, sortable columns and pages of 50.

Four reads whatever the page size or the fleet: the racks (the filter's choices and
the rows' rack names), the matching count, one page (``LIMIT``/``OFFSET`` under an
``ORDER BY`` that ends in the unique name, so pages neither repeat nor skip a row),
and the live allocations of the page's machines with their owners' names. Rows are
plain column tuples, never ORM objects, and the page selects only what it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import ColumnElement, func, select
from sqlmodel import Session, col

from provisiond.allocations.leases import role_rank
from provisiond.allocations.states import AllocationState
from provisiond.auth import Role
from provisiond.console.auth import ConsoleUser
from provisiond.errors import Problem, ValidationFailed
from provisiond.lifecycle import State
from provisiond.machines import listing
from provisiond.models import Allocation, ApiToken, Machine, Nic, Rack

PAGE_SIZE = 50
MAX_PAGE = 100_000
MAX_Q = 64
MAX_TEXT = 64
SORTS = ("name", "state", "rack", "arch", "updated")
ORDERS = ("asc", "desc")
#: The states a machine can be listed in (``new`` is never stored).
STATES = tuple(s.value for s in State if s is not State.NEW)
#: Allocation states that hold a machine.
HOLDING = (AllocationState.DEPLOYING.value, AllocationState.READY.value)
#: (column key, heading, sortable)
COLUMNS = (
    ("name", "Name", True),
    ("state", "State", True),
    ("power", "Power", False),
    ("rack", "Rack / U", True),
    ("arch", "Arch", True),
    ("size", "CPUs / RAM", False),
    ("tags", "Tags", False),
    ("owner", "Lease owner", False),
    ("updated", "Updated", True),
)


def _clean(name: str, value: str, limit: int, problems: list[Problem], hints: list[str]) -> str:
    value = value.strip()
    if len(value) > limit:
        problems.append(Problem(name, f"{len(value)} characters long (at most {limit})"))
        hints.append(
            f"the search (q) is at most {limit} characters of a name, serial or MAC"
            if name == "q"
            else f"{name} is at most {limit} characters"
        )
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problems.append(Problem(name, "holds a control character"))
        hints.append(f"type {name} without control characters")
    return value


@dataclass(frozen=True)
class Params:
    """A checked machine-list request (the page's query string)."""

    state: str = ""
    rack: str = ""
    tag: str = ""
    arch: str = ""
    q: str = ""
    sort: str = "name"
    order: str = "asc"
    page: int = 1

    @classmethod
    def parse(
        cls,
        state: str = "",
        rack: str = "",
        tag: str = "",
        arch: str = "",
        q: str = "",
        sort: str = "",
        order: str = "",
        page: str = "",
    ) -> Params:
        """Check the raw query values; every problem at once, as one 422 with hints."""
        problems: list[Problem] = []
        hints: list[str] = []
        state = _clean("state", state, MAX_TEXT, problems, hints)
        if state and state not in STATES:
            problems.append(Problem("state", f"{state[:32]!r} is not a machine state"))
            hints.append("states: " + ", ".join(STATES))
        rack = _clean("rack", rack, MAX_TEXT, problems, hints)
        tag = _clean("tag", tag, MAX_TEXT, problems, hints)
        arch = _clean("arch", arch, 16, problems, hints)
        q = _clean("q", q, MAX_Q, problems, hints)
        sort = sort.strip() or "name"
        if sort not in SORTS:
            problems.append(Problem("sort", f"{sort[:32]!r} is not a column to sort by"))
            hints.append("sort by one of: " + ", ".join(SORTS))
        order = order.strip() or "asc"
        if order not in ORDERS:
            problems.append(Problem("order", f"{order[:32]!r} is neither asc nor desc"))
            hints.append("order is asc or desc")
        text = page.strip() or "1"
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= number <= MAX_PAGE:
            problems.append(Problem("page", f"{text[:32]!r} is not a page number"))
            hints.append(f"page is a whole number from 1 to {MAX_PAGE}")
        if problems:
            raise ValidationFailed(
                problems, hint="; ".join(dict.fromkeys(hints)) or "see /ui/machines"
            )
        return cls(state, rack, tag, arch, q, sort, order, number)

    def url(self, **changes: Any) -> str:
        """This list's address with ``changes``; default values are left out."""
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        kept = {k: v for k, v in values.items() if v != getattr(_DEFAULT, k)}
        return "/ui/machines" + ("?" + urlencode(kept) if kept else "")


_DEFAULT = Params()


def _conditions(params: Params, rack_id: int | None, dialect: str) -> list[ColumnElement[bool]]:
    conditions = listing.filters(
        dialect, state=params.state, rack_id=rack_id, arch=params.arch, tag=params.tag
    )
    if params.q:
        needle = params.q.lower()
        mac = needle.replace("-", ":")
        with_mac = select(col(Nic.machine_id)).where(col(Nic.mac).contains(mac, autoescape=True))
        conditions.append(
            func.lower(col(Machine.name)).contains(needle, autoescape=True)
            | func.lower(col(Machine.serial)).contains(needle, autoescape=True)
            | col(Machine.id).in_(with_mac)
        )
    return conditions


def _order(params: Params) -> list[Any]:
    """The page's ORDER BY: the column, then the unique name (a stable order for OFFSET
    paging). NULLS LAST only where a column can be NULL (a rackless machine's rack and
    U): on the others it would keep the database from walking the column's index."""
    desc = params.order == "desc"
    if params.sort == "rack":
        keys: list[Any] = [col(Rack.name), col(Machine.u_position)]
        nullable = [(k.desc() if desc else k.asc()).nulls_last() for k in keys]
    else:
        nullable = []
    columns: dict[str, list[Any]] = {
        "name": [],
        "state": [col(Machine.state)],
        "rack": [],
        "arch": [col(Machine.arch)],
        "updated": [col(Machine.updated_at)],
    }
    plain = [*columns[params.sort], col(Machine.name)]
    return nullable + [k.desc() if desc else k.asc() for k in plain]


def _owners(
    session: Session, user: ConsoleUser, ids: list[int]
) -> dict[int, tuple[str, datetime | None]]:
    """Machine id -> (who holds it, lease end) for the page's held machines; a ci token
    sees the owner's name only on its own allocations ("leased" on the others)."""
    if not ids:
        return {}
    rows = session.execute(
        select(
            col(Allocation.machine_id),
            col(Allocation.owner_token_id),
            col(ApiToken.name),
            col(Allocation.expires_at),
        )
        .join(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .where(col(Allocation.machine_id).in_(ids), col(Allocation.state).in_(HOLDING))
        .order_by(col(Allocation.id))
    ).all()
    everyone = role_rank(user.token.role) >= Role.operator
    out: dict[int, tuple[str, datetime | None]] = {}
    for machine_id, owner_id, owner, expires in rows:
        mine = owner_id == user.token.id
        out[machine_id] = (
            owner if everyone or mine else "leased",
            expires if everyone or mine else None,
        )
    return out


def _size(cpus: int | None, ram_mib: int | None) -> str:
    parts = [f"{cpus} CPU" if cpus is not None else "? CPU"]
    if ram_mib is not None:
        gib = ram_mib / 1024
        parts.append(f"{gib:.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB")
    else:
        parts.append("? RAM")
    return " / ".join(parts)


def build(session: Session, user: ConsoleUser, params: Params) -> dict[str, Any]:
    racks = session.execute(select(col(Rack.id), col(Rack.name)).order_by(col(Rack.name))).all()
    rack_names = {rid: name for rid, name in racks}
    rack_id = None
    if params.rack:
        rack_id = next((rid for rid, name in racks if name == params.rack), None)
        if rack_id is None:
            shown = ", ".join(name for _rid, name in racks[:20]) or "none yet"
            raise ValidationFailed(
                [Problem("rack", f"no rack named {params.rack!r}")],
                hint=f"racks: {shown}" + (" ..." if len(racks) > 20 else ""),
            )
    conditions = _conditions(params, rack_id, session.get_bind().dialect.name)
    total = int(
        session.execute(select(func.count()).select_from(Machine).where(*conditions)).scalar() or 0
    )
    pages = max(1, -(-total // PAGE_SIZE))
    stmt = select(
        col(Machine.id),
        col(Machine.name),
        col(Machine.state),
        col(Machine.power_state),
        col(Machine.rack_id),
        col(Machine.u_position),
        col(Machine.arch),
        col(Machine.cpus),
        col(Machine.ram_mib),
        col(Machine.tags),
        col(Machine.updated_at),
    ).where(*conditions)
    if params.sort == "rack":
        stmt = stmt.outerjoin(Rack, col(Rack.id) == col(Machine.rack_id))
    offset = (params.page - 1) * PAGE_SIZE
    found = session.execute(stmt.order_by(*_order(params)).limit(PAGE_SIZE).offset(offset)).all()
    owners = _owners(session, user, [row[0] for row in found])
    rows = []
    for mid, name, state, power, rid, u, arch, cpus, ram, tags, updated in found:
        owner, expires = owners.get(mid, ("", None))
        rows.append(
            {
                "name": name,
                "href": "/ui/machines/" + quote(name, safe=""),
                "state": state,
                "power_state": power,
                "rack": rack_names.get(rid, "") if rid is not None else "",
                "u": u,
                "arch": arch,
                "size": _size(cpus, ram),
                "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
                "owner": owner,
                "lease_expires": expires,
                "updated_at": updated,
            }
        )
    columns = []
    for key, label, sortable in COLUMNS:
        current = params.sort == key
        order = ("desc" if params.order == "asc" else "asc") if current else "asc"
        columns.append(
            {
                "key": key,
                "label": label,
                "href": params.url(sort=key, order=order, page=1) if sortable else "",
                "current": params.order if current else "",
            }
        )
    return {
        "params": params,
        "states": STATES,
        "racks": [name for _rid, name in racks],
        "columns": columns,
        "rows": rows,
        "total": total,
        "page_number": params.page,
        "pages": pages,
        "first": offset + 1 if rows else 0,
        "last": offset + len(rows),
        "prev_url": params.url(page=min(params.page - 1, pages)) if params.page > 1 else "",
        "next_url": params.url(page=params.page + 1) if params.page < pages else "",
        "clear_url": "/ui/machines",
    }
