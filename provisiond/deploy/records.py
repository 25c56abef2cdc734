"""Deploy, inspect and release: the daemon side of "instance ready".

Callers (the allocation service, the machines API/CLI) only *start* work, inside
their own transaction, and then wake the deploy engine after commit:

    with services.db.transaction() as s:
        machine = ...  # already ALLOCATED (by lifecycle.claim/advance)
        deploy.start_deploy(s, machine, allocation=alloc, image_id=alloc.image_id,
                            actor="token:ci-1", settings=services.settings,
                            secrets=services.secrets)
    services.wake_deployer()

``start_deploy`` moves the machine ``allocated -> deploying`` and writes a
:class:`~provisiond.models.Deployment` row (per-deploy SSH key pair, phases). The
engine (:mod:`provisiond.deploy.engine`, a scheduler loop) then does the
blocking work from the DB state alone, so a restarted daemon resumes: power-cycle
into PXE, wait for the OS callback, SSH agent install, wait for the heartbeat.

The allocator's claim (:func:`provisiond.lifecycle.claim_available`) moves a machine
``available -> deploying`` itself and :func:`insert_deploy` writes its row in the same
request; the key pair is then made by the engine's first step (:func:`ensure_keys`),
outside the request's write transaction.

``start_release`` moves ``active | deploying | installing_agent | deploy_failed |
allocated | release_failed -> releasing`` (a running deploy ends as ``released``); the
engine wipes the disks over SSH (when an OS with our key is up),
powers off, and makes the machine ``available``.

``fail`` fails a running deploy or inspection (``-> deploy_failed | inspect_failed``)
with a reason and closes its record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from provisiond import events
from provisiond.config import Settings
from provisiond.deploy.claim_rows import DEPLOY as DEPLOY
from provisiond.deploy.claim_rows import INSPECT as INSPECT
from provisiond.deploy.claim_rows import insert_deploy as insert_deploy
from provisiond.deploy.claim_rows import supersede_running as supersede_running
from provisiond.deploy.deadlines import deadline_reason as deadline_reason
from provisiond.deploy.keys import callback_token as callback_token
from provisiond.deploy.keys import ensure_keys as ensure_keys
from provisiond.deploy.keys import host_key_fingerprint as host_key_fingerprint
from provisiond.deploy.keys import key_pair
from provisiond.deploy.keys import new_ssh_keypair as new_ssh_keypair
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, advance
from provisiond.models import Allocation, Deployment, Image, Machine, utcnow
from provisiond.secrets import SecretBox


def running_deployment(session: Session, machine_id: int) -> Deployment | None:
    """The machine's newest deployment that has not finished, if any."""
    return running_deployments(session, [machine_id]).get(machine_id)


def running_deployments(session: Session, machine_ids: list[int]) -> dict[int, Deployment]:
    """:func:`running_deployment` for many machines in one query: machine id -> record."""
    if not machine_ids:
        return {}
    rows = session.exec(
        select(Deployment)
        .where(col(Deployment.machine_id).in_(machine_ids), Deployment.outcome == "")
        .order_by(col(Deployment.id))
    ).all()
    return {row.machine_id: row for row in rows}  # ascending ids: the newest one wins


def disk_image_ids(session: Session, image_ids: list[int | None]) -> set[int]:
    """Which of ``image_ids`` are whole-disk images (written to the disk by a deploy)."""
    wanted = {i for i in image_ids if i is not None}
    if not wanted:
        return set()
    rows = session.exec(
        select(Image.id).where(col(Image.id).in_(wanted), Image.kind == "disk")
    ).all()
    return {i for i in rows if i is not None}


def latest_deployment(session: Session, machine_id: int) -> Deployment | None:
    return session.exec(
        select(Deployment)
        .where(Deployment.machine_id == machine_id)
        .order_by(col(Deployment.id).desc())
        .limit(1)
    ).first()


def finish(
    deployment: Deployment, outcome: str, reason: str = "", at: datetime | None = None
) -> None:
    deployment.outcome = outcome
    deployment.failure_reason = reason[:1024]
    deployment.finished_at = at or utcnow()


def mark_phase(deployment: Deployment, phase: str, at: datetime | None = None) -> bool:
    """Record the first time ``phase`` was reached; False if it was already recorded."""
    if phase in deployment.phases:
        return False
    deployment.phases = {**deployment.phases, phase: (at or utcnow()).isoformat()}
    return True


#: ``phases`` key: the last time the machine asked again for a boot phase it had
#: already reached, ``{"phase": "dhcp_discover", "at": "..."}``. Not a phase (its
#: value is no time stamp), so phase tables and deadline reasons skip it.
ASKED_AGAIN = "asked_again"


def mark_asked_again(deployment: Deployment, phase: str, at: datetime | None = None) -> None:
    stamp = {"phase": phase, "at": (at or utcnow()).isoformat()}
    deployment.phases = {**deployment.phases, ASKED_AGAIN: stamp}


def _new_record(
    session: Session,
    machine: Machine,
    *,
    kind: str,
    allocation: Allocation | None,
    image_id: int | None,
    secrets: SecretBox,
    attempt: int | None = None,
) -> Deployment:
    assert machine.id is not None
    for old in session.exec(
        select(Deployment).where(Deployment.machine_id == machine.id, Deployment.outcome == "")
    ).all():
        finish(old, "superseded", f"superseded by a new {kind}")
        session.add(old)
    if attempt is None and allocation is not None and allocation.id is not None:
        attempt = 1 + len(
            session.exec(
                select(Deployment.id).where(
                    Deployment.allocation_id == allocation.id, Deployment.machine_id == machine.id
                )
            ).all()
        )
    record = Deployment(
        machine_id=machine.id,
        allocation_id=allocation.id if allocation else None,
        kind=kind,
        image_id=image_id,
        attempt=attempt or 1,
    )
    key_pair(record, secrets)
    mark_phase(record, f"{kind}_requested")
    session.add(record)
    session.flush()
    return record


def start_deploy(
    session: Session,
    machine: Machine,
    *,
    allocation: Allocation | None,
    image_id: int | None,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
) -> Deployment:
    """``allocated -> deploying`` plus a new Deployment row; the engine does the rest.

    The allocation's SSH keys and user-data stay on the allocation, where the NoCloud
    seed reads them; the per-deploy key pair is made here and only its public half
    leaves the daemon.
    """
    record = _new_record(
        session, machine, kind=DEPLOY, allocation=allocation, image_id=image_id, secrets=secrets
    )
    advance(
        session,
        machine,
        Ev.DEPLOY,
        actor=actor,
        timeouts=settings.timeouts,
        reason="deploy requested",
        details={"deployment": record.uuid, "image_id": image_id, "attempt": record.attempt},
    )
    return record


def start_inspection(
    session: Session,
    machine: Machine,
    *,
    actor: str,
    settings: Settings,
    secrets: SecretBox,
    power_cycle: bool = True,
    reason: str = "inspection requested",
) -> Deployment:
    """``enrolled | inspect_failed | maintenance -> inspecting`` plus its record.

    ``power_cycle=False`` when the machine is already network-booting (PXE enroll):
    the engine then skips the BMC step.
    """
    record = _new_record(
        session, machine, kind=INSPECT, allocation=None, image_id=None, secrets=secrets
    )
    if not power_cycle:
        mark_phase(record, "power_cycle")
        record.phases = {**record.phases, "power_cycle_skipped": "already booting"}
    advance(
        session,
        machine,
        Ev.INSPECT,
        actor=actor,
        timeouts=settings.timeouts,
        reason=reason,
        details={"deployment": record.uuid},
    )
    return record


def ensure_inspection_record(
    session: Session, machine: Machine, *, secrets: SecretBox
) -> Deployment:
    """The running inspection record of an ``inspecting`` machine, made if missing."""
    assert machine.id is not None
    record = running_deployment(session, machine.id)
    if record is not None and record.kind == INSPECT:
        return record
    record = _new_record(
        session, machine, kind=INSPECT, allocation=None, image_id=None, secrets=secrets
    )
    mark_phase(record, "power_cycle")
    return record


#: "not looked up yet" for ``running`` arguments (None means: none is running).
UNKNOWN: Any = object()


def _close_running(
    session: Session, machine: Machine, outcome: str, reason: str, running: Any = UNKNOWN
) -> Deployment | None:
    assert machine.id is not None
    record: Deployment | None = (
        running_deployment(session, machine.id) if running is UNKNOWN else running
    )
    if record is not None:
        finish(record, outcome, reason)
        session.add(record)
    return record


def start_release(
    session: Session,
    machine: Machine,
    *,
    actor: str,
    reason: str,
    settings: Settings,
    running: Deployment | None = UNKNOWN,
    request_id: str = "",
    batch: events.Batch | None = None,
) -> None:
    """``active | deploying | installing_agent | deploy_failed | allocated | release_failed
    -> releasing``; a running deploy ends as ``released``. ``running``: the machine's
    running deployment when the caller already read it (None: none)."""
    closed = _close_running(session, machine, "released", reason, running)
    advance(
        session,
        machine,
        Ev.RELEASE,
        actor=actor,
        timeouts=settings.timeouts,
        reason=reason,
        details={"deployment": closed.uuid} if closed else None,
        request_id=request_id,
        batch=batch,
    )


def fail(
    session: Session,
    machine: Machine,
    *,
    reason: str,
    actor: str,
    settings: Settings,
    details: dict[str, Any] | None = None,
) -> None:
    """Fail the machine's running deploy or inspection and close its record."""
    running = _close_running(session, machine, "failed", reason)
    advance(
        session,
        machine,
        Ev.FAIL,
        actor=actor,
        timeouts=settings.timeouts,
        reason=reason,
        details={**(details or {}), **({"deployment": running.uuid} if running else {})},
    )


def retry_from_power_cycle(
    session: Session, machine: Machine, record: Deployment, *, secrets: SecretBox, reason: str
) -> Deployment:
    """Start the running deploy or inspection over from the power-cycle, as a new attempt.

    For a boot the daemon lost track of (it was down while the OS tried to call back):
    a fresh record (new per-deploy key and callback token) supersedes the old one and
    the engine power-cycles again. The lifecycle state does not change.
    """
    allocation = session.get(Allocation, record.allocation_id) if record.allocation_id else None
    new = _new_record(
        session,
        machine,
        kind=record.kind,
        allocation=allocation,
        image_id=record.image_id,
        secrets=secrets,
        attempt=record.attempt + 1,
    )
    events.record(
        session,
        EventKind.DEPLOY,
        "retry",
        machine=machine,
        actor="engine",
        message=f"{record.kind} attempt {new.attempt}: {reason}",
        details={"deployment": new.uuid, "previous": record.uuid},
    )
    return new
