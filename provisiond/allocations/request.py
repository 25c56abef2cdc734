"""A new allocation request: validate, claim a machine, insert, start the deploy.

The matched path is one write transaction of a handful of statements: the claim
(``UPDATE ... RETURNING``, only while no other request is pending), the allocation's
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (a taken Idempotency-Key rolls it
all back and answers the first request), the deploy row, and every event in one
INSERT. The deploy's key pair is made later by the engine, not in this transaction.
:func:`start` is the queue's path for a stored pending request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, bindparam, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from provisiond import events
from provisiond.allocations import match as allocation_match
from provisiond.allocations.leases import QuotaExceeded, check_lease, record
from provisiond.allocations.states import LIVE_STATES, AllocEv, advance, apply
from provisiond.allocations.views import out, to_out
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.lifecycle import Claimed
from provisiond.logging import get_logger
from provisiond.models import Allocation, ApiToken, Deployment, Image, utcnow
from provisiond.models.base import new_uuid
from provisiond.schemas.allocations import AllocationIn, AllocationOut, format_lease

log = get_logger(__name__)


def request_hash(spec: AllocationIn) -> str:
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


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


@dataclass(frozen=True)
class _ImageRef:
    """What a request needs of its image (not the whole row)."""

    id: int
    name: str
    arch: str
    kind: str
    firmware: str


_IMAGE = sa_select(
    col(Image.id), col(Image.name), col(Image.arch), col(Image.kind), col(Image.firmware)
).where(col(Image.name) == bindparam("name"))


def _image(session: Session, name: str) -> _ImageRef:
    row = session.execute(_IMAGE, {"name": name}).first()
    if row is None:
        known = session.exec(select(Image.name).order_by(col(Image.name)).limit(20)).all()
        raise ValidationFailed(
            [Problem("image", f"no image named {name!r}")],
            hint=f"known images: {', '.join(known)}"
            if known
            else "register an image first ('provisiond images add'); GET /api/v1/images lists them",
        )
    return _ImageRef(*row)


def _claim(
    session: Session,
    services: Services,
    allocation: Allocation,
    *,
    actor: str,
    request_id: str,
    batch: events.Batch,
    deployment: str,
    attempt: int,
    unless_pending: bool = False,
) -> Claimed | None:
    return allocation_match.claim(
        session,
        allocation,
        dialect=services.db.dialect,
        actor=actor,
        timeouts=services.settings.timeouts,
        batch=batch,
        request_id=request_id,
        details={"deployment": deployment, "image_id": allocation.image_id, "attempt": attempt},
        unless_pending=unless_pending,
    )


def start(
    session: Session, services: Services, allocation: Allocation, *, actor: str, request_id: str
) -> bool:
    """Claim a machine for a pending (stored) ``allocation`` and start its deploy; False if
    none fits. The queue's path; a new request takes :func:`create`'s."""
    assert allocation.id is not None
    batch, deployment = events.Batch(), new_uuid()
    tries = session.execute(
        select(func.count()).where(col(Deployment.allocation_id) == allocation.id)
    ).scalar_one()
    claimed = _claim(
        session,
        services,
        allocation,
        actor=actor,
        request_id=request_id,
        batch=batch,
        deployment=deployment,
        attempt=tries + 1,
    )
    if claimed is None:
        return False
    advance(session, allocation, AllocEv.CLAIM, machine_id=claimed.id)
    deploy.supersede_running(session, claimed.id, deploy.DEPLOY)
    deploy.insert_deploy(
        session,
        machine_id=claimed.id,
        allocation_id=allocation.id,
        image_id=allocation.image_id,
        attempt=tries + 1,
        uuid=deployment,
    )
    for row in batch.rows:  # the claim's event names the allocation, as on the request path
        row["allocation_id"] = allocation.id
    batch.write(session)
    return True


class _Replay(Exception):
    """The request's Idempotency-Key is already stored: roll back and answer the first."""


_TABLE: Table = Allocation.__table__  # type: ignore[attr-defined]
#: INSERT ... ON CONFLICT (owner, Idempotency-Key) DO NOTHING RETURNING id, per dialect,
#: built once; the row's values come with each execute.
_INSERTS = {
    name: insert(_TABLE)
    .on_conflict_do_nothing(index_elements=["owner_token_id", "idempotency_key"])
    .returning(_TABLE.c.id)
    for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


def _insert(session: Session, allocation: Allocation, dialect: str) -> int | None:
    values = {c.name: getattr(allocation, c.name) for c in _TABLE.columns if c.name != "id"}
    row = session.execute(_INSERTS[dialect], values).first()
    return None if row is None else int(row[0])


def _earlier(services: Services, token: ApiToken, key: str, digest: str) -> AllocationOut | None:
    """The allocation an earlier request with this Idempotency-Key made, if any."""
    with services.db.read_session() as session:
        earlier = session.exec(
            select(Allocation).where(
                Allocation.owner_token_id == token.id, Allocation.idempotency_key == key
            )
        ).first()
        if earlier is None:
            return None
        if earlier.request_hash != digest:
            raise Conflict(
                f"Idempotency-Key {key!r} was used for a different request",
                hint=f"it made allocation {earlier.uuid}; send the same body to get it "
                "again, or use a new key for a new request",
            )
        return to_out(session, earlier)


def _request(
    services: Services,
    token: ApiToken,
    spec: AllocationIn,
    digest: str,
    *,
    idempotency_key: str | None,
    actor: str,
    request_id: str,
    supersede: bool,
) -> tuple[AllocationOut, bool]:
    """One transaction: claim (unless others wait), insert, deploy row, events."""
    assert token.id is not None
    dialect = services.db.dialect
    with services.db.transaction() as session:
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
        check_lease(spec.lease, token.role)
        if token.quota_machines is not None:
            # Lock the token row: a quota is checked one request at a time (only then).
            owner = session.exec(
                select(ApiToken).where(ApiToken.id == token.id).with_for_update()
            ).one()
            _check_quota(session, owner)
        now = utcnow()
        allocation = Allocation(
            owner_token_id=token.id,
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
        batch, deployment = events.Batch(), new_uuid()
        claimed = _claim(
            session,
            services,
            allocation,
            actor=actor,
            request_id=request_id,
            batch=batch,
            deployment=deployment,
            attempt=1,
            unless_pending=True,
        )
        if claimed is not None:
            apply(allocation, AllocEv.CLAIM, machine_id=claimed.id, now=now)
        allocation.id = _insert(session, allocation, dialect)
        if allocation.id is None:
            raise _Replay
        if claimed is not None:
            if supersede:
                deploy.supersede_running(session, claimed.id, deploy.DEPLOY)
            deploy.insert_deploy(
                session,
                machine_id=claimed.id,
                allocation_id=allocation.id,
                image_id=image.id,
                uuid=deployment,
                now=now,
            )
        else:
            allocation_match.impossible(session, constraints, dialect)
        record(
            session,
            allocation,
            "request",
            f"{token.name} asked for a machine for {format_lease(spec.lease)}",
            actor=actor,
            request_id=request_id,
            details={"constraints": constraints, "image": image.name},
            batch=batch,
        )
        for row in batch.rows:
            row["allocation_id"] = allocation.id
        batch.write(session)
        view = out(
            allocation,
            owner=token.name,
            image=image.name,
            machine=claimed.name if claimed is not None else None,
        )
    return view, claimed is not None


def create(
    services: Services,
    token: ApiToken,
    spec: AllocationIn,
    *,
    idempotency_key: str | None = None,
    actor: str,
    request_id: str = "",
) -> tuple[AllocationOut, bool]:
    """Queue or match a request; returns (allocation, created). A replay returns created=False.

    The matched path is one write transaction of a handful of statements: the claim
    (``UPDATE ... RETURNING``, only while no other request is pending), the
    allocation's ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (a taken
    Idempotency-Key rolls it all back and answers the first request), the deploy
    row, and every event in one INSERT. The deploy's key pair is made later by the
    engine, not in this transaction.
    """
    digest = request_hash(spec)
    supersede = False
    for _ in range(2):
        try:
            view, matched = _request(
                services,
                token,
                spec,
                digest,
                idempotency_key=idempotency_key,
                actor=actor,
                request_id=request_id,
                supersede=supersede,
            )
        except _Replay:
            assert idempotency_key is not None
            earlier = _earlier(services, token, idempotency_key, digest)
            if earlier is None:  # its first request rolled back in between: try again
                continue
            return earlier, False
        except (QuotaExceeded, ValidationFailed):
            # A retried request that already made its allocation gets that, not an error.
            if idempotency_key is not None:
                earlier = _earlier(services, token, idempotency_key, digest)
                if earlier is not None:
                    return earlier, False
            raise
        except IntegrityError:
            # uq_deployment_running: the machine had a deploy left running (a defect
            # elsewhere); close it and claim again.
            if supersede:
                raise
            log.warning("allocation_claim_found_running_deploy", retry=True)
            supersede = True
            continue
        if matched:
            services.wake_deployer()
        else:
            services.wake_allocator()
        return view, True
    raise Conflict(
        "the request collided with a concurrent one twice",
        hint="retry it (with the same Idempotency-Key, if you sent one)",
    )
