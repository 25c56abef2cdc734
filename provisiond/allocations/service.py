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

import hashlib
import json
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from provisiond.allocations import match as allocation_match
from provisiond.allocations.leases import (
    QuotaExceeded,
    check_lease,
    free_machine,
    hub_for,
    record,
    role_rank,
)
from provisiond.allocations.states import (
    FINAL_STATES,
    LIVE_STATES,
    STATES,
    AllocationState,
    AllocEv,
    advance,
)
from provisiond.auth import Role
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.errors import Conflict, Forbidden, NotFound, Problem, ValidationFailed
from provisiond.lifecycle import State
from provisiond.models import Allocation, ApiToken, Image, Machine, Nic, utcnow
from provisiond.schemas.allocations import AllocationIn, AllocationOut, format_lease

#: Pending requests tried per queue pass (the rest wait for the next pass).
MAX_WALK = 500
#: Machine states of a deploy still under way.
DEPLOYING = frozenset({State.ALLOCATED, State.DEPLOYING, State.INSTALLING_AGENT})


def request_hash(spec: AllocationIn) -> str:
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


# --- reading -------------------------------------------------------------------


def _address(session: Session, machine: Machine) -> str | None:
    assert machine.id is not None
    latest = deploy.latest_deployment(session, machine.id)
    if latest is not None and latest.address:
        return latest.address
    nic = session.exec(
        select(Nic).where(Nic.machine_id == machine.id, Nic.ip_address != "").order_by(col(Nic.id))
    ).first()
    return nic.ip_address if nic else None


def to_out(session: Session, allocation: Allocation) -> AllocationOut:
    owner = session.get(ApiToken, allocation.owner_token_id)
    image = session.get(Image, allocation.image_id) if allocation.image_id else None
    machine = session.get(Machine, allocation.machine_id) if allocation.machine_id else None
    shown = machine is not None and allocation.state in (
        AllocationState.DEPLOYING,
        AllocationState.READY,
    )
    host_key = machine.ssh_host_key if machine is not None and shown else ""
    return AllocationOut(
        id=allocation.uuid,
        state=allocation.state,
        owner=owner.name if owner else "",
        image=image.name if image else None,
        constraints=allocation.constraints,
        machine=machine.name if machine else None,
        address=_address(session, machine) if machine is not None and shown else None,
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


def find(session: Session, token: ApiToken, ident: str, *, lock: bool = False) -> Allocation:
    """The allocation ``ident`` (its id), if ``token`` may see it; others' are 404 to ci."""
    query = select(Allocation).where(Allocation.uuid == ident)
    allocation = session.exec(query.with_for_update() if lock else query).first()
    if allocation is None or (
        role_rank(token.role) < Role.operator and allocation.owner_token_id != token.id
    ):
        raise NotFound(
            f"no allocation {ident!r}",
            hint="'provisiond allocations list' shows yours (ci tokens see only their own)",
        )
    return allocation


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
    return [to_out(session, row) for row in rows]


# --- creating ------------------------------------------------------------------


def _check_quota(session: Session, token: ApiToken) -> None:
    if token.quota_machines is None:
        return
    counts = dict(
        session.execute(
            select(col(Allocation.state), func.count())
            .where(
                Allocation.owner_token_id == token.id,
                col(Allocation.state).in_([s.value for s in LIVE_STATES]),
            )
            .group_by(col(Allocation.state))
        ).all()
    )
    used = sum(counts.values())
    if used >= token.quota_machines:
        detail = ", ".join(f"{counts.get(s, 0)} {s}" for s in LIVE_STATES)
        raise QuotaExceeded(
            f"token {token.name!r} is at its quota of {token.quota_machines} machine(s)",
            hint=f"in use: {used} of {token.quota_machines} ({detail}); release one "
            "('provisiond release ID') or ask an admin to raise the quota",
        )


def _image(session: Session, name: str) -> Image:
    image = session.exec(select(Image).where(Image.name == name)).first()
    if image is None:
        known = session.exec(select(Image.name).order_by(col(Image.name)).limit(20)).all()
        raise ValidationFailed(
            [Problem("image", f"no image named {name!r}")],
            hint=f"known images: {', '.join(known)}"
            if known
            else "register an image first ('provisiond images add'); GET /api/v1/images lists them",
        )
    return image


def start(
    session: Session, services: Services, allocation: Allocation, *, actor: str, request_id: str
) -> bool:
    """Claim a machine for a pending ``allocation`` and start its deploy; False if none fits."""
    settings = services.settings
    machine = allocation_match.claim(
        session,
        allocation,
        dialect=services.db.dialect,
        actor=actor,
        timeouts=settings.timeouts,
        request_id=request_id,
    )
    if machine is None:
        return False
    advance(session, allocation, AllocEv.CLAIM, machine_id=machine.id)
    deploy.start_deploy(
        session,
        machine,
        allocation=allocation,
        image_id=allocation.image_id,
        actor=actor,
        settings=settings,
        secrets=services.secrets,
    )
    return True


def create(
    services: Services,
    token: ApiToken,
    spec: AllocationIn,
    *,
    idempotency_key: str | None = None,
    actor: str,
    request_id: str = "",
) -> tuple[AllocationOut, bool]:
    """Queue or match a request; returns (allocation, created). A replay returns created=False."""
    digest = request_hash(spec)
    matched = False
    with services.db.transaction() as session:
        # Lock the token row: one token's requests are checked (quota, key) one at a time.
        owner = session.exec(
            select(ApiToken).where(ApiToken.id == token.id).with_for_update()
        ).one()
        assert owner.id is not None
        if idempotency_key is not None:
            earlier = session.exec(
                select(Allocation).where(
                    Allocation.owner_token_id == owner.id,
                    Allocation.idempotency_key == idempotency_key,
                )
            ).first()
            if earlier is not None:
                if earlier.request_hash != digest:
                    raise Conflict(
                        f"Idempotency-Key {idempotency_key!r} was used for a different request",
                        hint=f"it made allocation {earlier.uuid}; send the same body to get it "
                        "again, or use a new key for a new request",
                    )
                return to_out(session, earlier), False
        image = _image(session, spec.image)
        constraints = spec.constraints.model_dump(exclude_none=True, exclude_defaults=True)
        constraints.setdefault("arch", image.arch)
        if image.kind == "disk" and image.firmware in ("bios", "uefi"):
            constraints["firmware"] = image.firmware  # the machine must boot the same way
        if constraints["arch"] != image.arch:
            raise ValidationFailed(
                [Problem("constraints.arch", f"image {image.name!r} is for {image.arch}")],
                hint=f"ask for arch {image.arch}, or pick an image built for {constraints['arch']}",
            )
        check_lease(spec.lease, owner.role)
        _check_quota(session, owner)
        now = utcnow()
        allocation = Allocation(
            owner_token_id=owner.id,
            constraints=constraints,
            image_id=image.id,
            ssh_keys=list(spec.ssh_keys),
            user_data=spec.user_data,
            root_device=spec.root_device,
            idempotency_key=idempotency_key,
            request_hash=digest,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=spec.lease),
            lease_s=spec.lease,
            ssh_user=spec.ssh_user,
        )
        session.add(allocation)
        session.flush()
        others_pending = session.exec(
            select(Allocation.id)
            .where(
                Allocation.state == AllocationState.PENDING.value, Allocation.id != allocation.id
            )
            .limit(1)
        ).first()
        if others_pending is None:
            matched = start(session, services, allocation, actor=actor, request_id=request_id)
        if not matched:
            allocation_match.impossible(session, constraints, services.db.dialect)
        record(
            session,
            allocation,
            "request",
            f"{owner.name} asked for a machine for {format_lease(spec.lease)}",
            actor=actor,
            request_id=request_id,
            details={"constraints": constraints, "image": image.name},
        )
        out = to_out(session, allocation)
    if matched:
        services.wake_deployer()
    else:
        services.wake_allocator()
    return out, True


# --- handing back --------------------------------------------------------------


def release(
    services: Services, token: ApiToken, ident: str, *, actor: str, request_id: str = ""
) -> AllocationOut:
    """Release early: the machine is wiped and made available. Repeating it is harmless."""
    with services.db.transaction() as session:
        allocation = find(session, token, ident, lock=True)
        if allocation.state in FINAL_STATES:
            return to_out(session, allocation)
        machine = session.get(Machine, allocation.machine_id) if allocation.machine_id else None
        reason = f"allocation {allocation.uuid} released by {actor}"
        sent = free_machine(
            session, allocation, machine, actor=actor, reason=reason, settings=services.settings
        )
        advance(session, allocation, AllocEv.RELEASE)
        record(session, allocation, "release", reason, actor=actor, machine=machine,
               request_id=request_id)  # fmt: skip
        out = to_out(session, allocation)
    if sent:
        services.wake_deployer()
    hub_for(services.db).notify(ident)
    return out


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
