"""Allocations: CI asks for a machine with constraints and a lease, and hands it back.

Life of an allocation::

    pending --claim--> deploying --machine active--> ready --lease ends--> expired
       |                  |  \\--deploy failed, tries left--> pending (other machine)
       |                  \\--deploy failed MAX_TRIES times--> failed
       \\--------- DELETE, from any live state ---------------------> released

The states and their transitions are :mod:`provisiond.allocations.states`.

Matching is the atomic claim (:func:`provisiond.allocations.match.claim`).
Fairness: :func:`run_queue` walks pending requests oldest first and gives each the
best-fitting machine it can take now, so a later request that fits a machine the
oldest cannot use gets it (no head-of-line blocking), while a request never takes
a machine an older pending one was offered first. The request path matches at once
only when no other request is pending; otherwise it queues and wakes the queue, so
the walk alone decides the order. (Two requests arriving in the same instant on
different daemons are both "first"; their order is the database's.)

Everything is in the database: the queue job resumes after a restart, and several
daemons on one PostgreSQL can run it at once (claims are atomic, state changes are
conditional on the state read).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Select, bindparam, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from provisiond import events
from provisiond.allocations.leases import check_lease, free_machine, hub_for, record
from provisiond.allocations.request import create as create
from provisiond.allocations.request import request_hash as request_hash
from provisiond.allocations.request import start as start
from provisiond.allocations.states import FINAL_STATES, LIVE_STATES, AllocEv, advance
from provisiond.allocations.views import find as find
from provisiond.allocations.views import get as get
from provisiond.allocations.views import list_allocations as list_allocations
from provisiond.allocations.views import may_see, out
from provisiond.allocations.views import open_allocation_of as open_allocation_of
from provisiond.allocations.views import to_out as to_out
from provisiond.container import Services
from provisiond.errors import Conflict
from provisiond.lifecycle import State
from provisiond.logging import get_logger
from provisiond.models import Allocation, ApiToken, Deployment, Image, Machine, utcnow
from provisiond.schemas.allocations import AllocationOut, format_lease

log = get_logger(__name__)

#: Pending requests tried per queue pass (the rest wait for the next pass).
MAX_WALK = 500
#: Machine states of a deploy still under way.
DEPLOYING = frozenset({State.ALLOCATED, State.DEPLOYING, State.INSTALLING_AGENT})


# --- handing back --------------------------------------------------------------


def _release_query(dialect: str) -> Select[Allocation, Machine, Deployment, str, str]:
    """One read: the allocation (row-locked), its machine, the machine's newest deploy,
    the owner's and the image's names. Built once per dialect."""
    newest = (
        sa_select(func.max(col(Deployment.id)))
        .where(col(Deployment.machine_id) == col(Allocation.machine_id))
        .correlate(Allocation)
        .scalar_subquery()
    )
    query = (
        sa_select(Allocation, Machine, Deployment, col(ApiToken.name), col(Image.name))
        .outerjoin(Machine, col(Machine.id) == col(Allocation.machine_id))
        .outerjoin(Deployment, col(Deployment.id) == newest)
        .outerjoin(ApiToken, col(ApiToken.id) == col(Allocation.owner_token_id))
        .outerjoin(Image, col(Image.id) == col(Allocation.image_id))
        .where(col(Allocation.uuid) == bindparam("ident"))
    )
    return query.with_for_update(of=Allocation) if dialect == "postgresql" else query


_RELEASE_QUERIES = {name: _release_query(name) for name in ("sqlite", "postgresql")}


def _release_row(
    session: Session, ident: str, dialect: str
) -> tuple[Allocation, Machine | None, Deployment | None, str, str | None] | None:
    row = session.execute(_RELEASE_QUERIES[dialect], {"ident": ident}).first()
    if row is None:
        return None
    allocation, machine, latest, owner, image = row
    return allocation, machine, latest, owner or "", image


def release(
    services: Services, token: ApiToken, ident: str, *, actor: str, request_id: str = ""
) -> AllocationOut:
    """Release early: the machine is wiped and made available. Repeating it is harmless.

    One read (allocation, machine, newest deploy, names), then one UPDATE each for the
    deploy it ends, the machine and the allocation, and one INSERT for the events.
    """
    with services.db.transaction() as session:
        row = _release_row(session, ident, services.db.dialect)
        if row is None:
            find(session, token, ident)  # raises the 404 with its hint
            raise AssertionError("unreachable")
        allocation, machine, latest, owner, image = row
        may_see(token, allocation, ident)
        if allocation.state in FINAL_STATES:
            return to_out(session, allocation)
        reason = f"allocation {allocation.uuid} released by {actor}"
        batch = events.Batch()
        sent = free_machine(
            session,
            allocation,
            machine,
            actor=actor,
            reason=reason,
            settings=services.settings,
            latest=latest,
            request_id=request_id,
            batch=batch,
        )
        advance(session, allocation, AllocEv.RELEASE)
        record(session, allocation, "release", reason, actor=actor, machine=machine,
               request_id=request_id, batch=batch)  # fmt: skip
        for event in batch.rows:
            event["allocation_id"] = allocation.id
        batch.write(session)
        view = out(allocation, owner=owner, image=image, machine=machine.name if machine else None)
    if sent:
        services.wake_deployer()
    hub_for(services.db).notify(ident)
    return view


def renew(
    services: Services,
    token: ApiToken,
    ident: str,
    lease_s: int,
    *,
    actor: str,
    request_id: str = "",
) -> AllocationOut:
    """Set the lease to ``lease_s`` from now (from readiness while not yet ready)."""
    check_lease(lease_s, token.role)
    with services.db.transaction() as session:
        allocation = find(session, token, ident, lock=True)
        if allocation.state not in LIVE_STATES:
            raise Conflict(
                f"allocation {ident} is {allocation.state}; only a live allocation can be renewed",
                hint="request a new allocation",
            )
        now = utcnow()
        allocation.lease_s = lease_s
        allocation.expires_at = now + timedelta(seconds=lease_s)
        allocation.updated_at = now
        session.add(allocation)
        record(
            session,
            allocation,
            "renew",
            f"lease renewed for {format_lease(lease_s)} by {actor}",
            actor=actor,
            request_id=request_id,
        )
        out = to_out(session, allocation)
    hub_for(services.db).notify(ident)
    return out
