"""Allocations as the API shows them: reads, the visibility rule, and the output view.

:func:`to_outs` builds the view of many allocations in a fixed number of reads (owners,
images, machines, addresses: one query each), not one per row; the request and
release paths build theirs from values in hand (:func:`out`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import Session, col, select

from provisiond.allocations.leases import role_rank
from provisiond.allocations.states import LIVE_STATES, STATES, AllocationState
from provisiond.auth import Role
from provisiond.deploy import records as deploy
from provisiond.errors import Forbidden, NotFound, Problem, ValidationFailed
from provisiond.models import Allocation, ApiToken, Deployment, Image, Machine, Nic
from provisiond.schemas.allocations import AllocationOut


def _shown(allocation: Allocation) -> bool:
    """Address and host key are shown while the machine is the allocation's."""
    return allocation.machine_id is not None and allocation.state in (
        AllocationState.DEPLOYING,
        AllocationState.READY,
    )


def out(
    allocation: Allocation,
    *,
    owner: str,
    image: str | None,
    machine: str | None,
    address: str | None = None,
    host_key: str = "",
) -> AllocationOut:
    """The API view, from values in hand (no reads)."""
    return AllocationOut(
        id=allocation.uuid,
        state=allocation.state,
        owner=owner,
        image=image,
        constraints=allocation.constraints,
        machine=machine,
        address=address,
        ssh_user=allocation.ssh_user,
        host_key=host_key or None,
        host_key_fingerprint=deploy.host_key_fingerprint(host_key) or None,
        lease_s=allocation.lease_s,
        attempts=allocation.attempts,
        failure_reason=allocation.failure_reason,
        created_at=allocation.created_at,
        updated_at=allocation.updated_at,
        expires_at=allocation.expires_at,
        released_at=allocation.released_at,
    )


def to_outs(session: Session, allocations: Sequence[Allocation]) -> list[AllocationOut]:
    """The API view of many allocations in a fixed number of reads (not one per row)."""
    if not allocations:
        return []
    owners = _names(session, ApiToken, {a.owner_token_id for a in allocations})
    images = _names(session, Image, {a.image_id for a in allocations if a.image_id})
    machine_ids = {a.machine_id for a in allocations if a.machine_id}
    machines = (
        {m.id: m for m in session.exec(select(Machine).where(col(Machine.id).in_(machine_ids)))}
        if machine_ids
        else {}
    )
    shown = {a.machine_id for a in allocations if _shown(a) and a.machine_id in machines}
    addresses = _addresses(session, shown)
    outs = []
    for allocation in allocations:
        machine = machines.get(allocation.machine_id) if allocation.machine_id else None
        visible = machine is not None and _shown(allocation)
        outs.append(
            out(
                allocation,
                owner=owners.get(allocation.owner_token_id, ""),
                image=images.get(allocation.image_id) if allocation.image_id else None,
                machine=machine.name if machine else None,
                address=addresses.get(machine.id or 0) if visible and machine else None,
                host_key=machine.ssh_host_key if visible and machine else "",
            )
        )
    return outs


def _names(session: Session, model: type[ApiToken] | type[Image], ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(model.id, model.name).where(col(model.id).in_(ids))).all()
    return {row[0]: row[1] for row in rows}


def _addresses(session: Session, machine_ids: set[int | None]) -> dict[int, str]:
    """Machine id -> where to reach it: its latest deployment's address, else a NIC's."""
    ids = [i for i in machine_ids if i is not None]
    if not ids:
        return {}
    latest = (
        select(func.max(col(Deployment.id)))
        .where(col(Deployment.machine_id).in_(ids))
        .group_by(col(Deployment.machine_id))
    )
    out: dict[int, str] = {
        mid: address
        for mid, address in session.execute(
            select(col(Deployment.machine_id), col(Deployment.address)).where(
                col(Deployment.id).in_(latest), col(Deployment.address) != ""
            )
        ).all()
    }
    missing = [i for i in ids if i not in out]
    if missing:
        for mid, address in session.execute(
            select(col(Nic.machine_id), col(Nic.ip_address))
            .where(col(Nic.machine_id).in_(missing), col(Nic.ip_address) != "")
            .order_by(col(Nic.id).desc())
        ).all():
            out[mid] = address  # descending ids: the lowest NIC id wins
    return out


def to_out(session: Session, allocation: Allocation) -> AllocationOut:
    return to_outs(session, [allocation])[0]


def find(session: Session, token: ApiToken, ident: str, *, lock: bool = False) -> Allocation:
    """The allocation ``ident`` (its id), if ``token`` may see it; others' are 404 to ci."""
    query = select(Allocation).where(Allocation.uuid == ident)
    allocation = session.exec(query.with_for_update() if lock else query).first()
    may_see(token, allocation, ident)
    assert allocation is not None
    return allocation


def may_see(token: ApiToken, allocation: Allocation | None, ident: str) -> None:
    if allocation is None or (
        role_rank(token.role) < Role.operator and allocation.owner_token_id != token.id
    ):
        raise NotFound(
            f"no allocation {ident!r}",
            hint="'provisiond allocations list' shows yours (ci tokens see only their own)",
        )


def get(session: Session, token: ApiToken, ident: str) -> AllocationOut:
    return to_out(session, find(session, token, ident))


def list_allocations(
    session: Session,
    token: ApiToken,
    *,
    state: str | None = None,
    owner: str | None = None,
    limit: int = 100,
) -> list[AllocationOut]:
    """Newest first. ci tokens list their own; operator/admin all, or one ``owner``'s."""
    query = select(Allocation)
    if role_rank(token.role) < Role.operator:
        if owner is not None and owner != token.name:
            raise Forbidden(
                f"token {token.name!r} (ci) may list only its own allocations",
                hint="leave out 'owner', or use an operator token",
            )
        query = query.where(Allocation.owner_token_id == token.id)
    elif owner is not None:
        owner_row = session.exec(select(ApiToken).where(ApiToken.name == owner)).first()
        if owner_row is None:
            raise NotFound(f"no token named {owner!r}", hint="GET /api/v1/tokens lists them")
        query = query.where(Allocation.owner_token_id == owner_row.id)
    if state is not None:
        states = state.split(",")
        if not set(states) <= set(STATES):
            raise ValidationFailed(
                [Problem("state", f"unknown state {state!r}")],
                hint="states: " + ", ".join(STATES) + " (comma-separated)",
            )
        query = query.where(col(Allocation.state).in_(states))
    rows = session.exec(query.order_by(col(Allocation.id).desc()).limit(limit)).all()
    return to_outs(session, rows)


def open_allocation_of(session: Session, machine: Machine) -> str | None:
    """The uuid of the allocation holding ``machine`` now, if any."""
    return session.exec(
        select(Allocation.uuid)
        .where(Allocation.machine_id == machine.id, col(Allocation.state).in_(LIVE_STATES))
        .order_by(col(Allocation.id).desc())
        .limit(1)
    ).first()
