"""The allocator's deploy rows: one INSERT for a claimed machine, one UPDATE to supersede.

:func:`provisiond.lifecycle.claim_available` moves a machine ``available ->
deploying`` itself; :func:`insert_deploy` writes its Deployment row in the same
request, as a Core INSERT with parameters (no ORM object, no key pair: the engine's
first step makes that, :func:`provisiond.deploy.keys.ensure_keys`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, update
from sqlmodel import Session, col

from provisiond.models import Deployment, utcnow
from provisiond.models.base import new_uuid

#: Deployment.kind values.
DEPLOY = "deploy"
INSPECT = "inspect"

_DEPLOYMENTS: Table = Deployment.__table__  # type: ignore[attr-defined]


def insert_deploy(
    session: Session,
    *,
    machine_id: int,
    allocation_id: int,
    image_id: int | None,
    attempt: int = 1,
    uuid: str | None = None,
    now: datetime | None = None,
) -> str:
    """One INSERT of a claimed machine's deploy row (no key pair yet: :func:`ensure_keys`);
    returns its uuid.

    The machine was ``available``, so no deployment of it is running; the partial
    unique index ``uq_deployment_running`` makes a second running row an error
    instead of a silent duplicate.
    """
    at = now or utcnow()
    values: dict[str, Any] = {
        "uuid": uuid or new_uuid(),
        "machine_id": machine_id,
        "allocation_id": allocation_id,
        "kind": DEPLOY,
        "image_id": image_id,
        "attempt": attempt,
        "ssh_public_key": "",
        "ssh_private_key_encrypted": "",
        "host_key": "",
        "address": "",
        "phases": {f"{DEPLOY}_requested": at.isoformat()},
        "outcome": "",
        "failure_reason": "",
        "started_at": at,
        "finished_at": None,
    }
    session.execute(_DEPLOYMENTS.insert(), values)
    return str(values["uuid"])


def supersede_running(session: Session, machine_id: int, kind: str) -> None:
    """Close any running deployment of the machine (one UPDATE) before a new one starts."""
    session.execute(
        update(Deployment)
        .where(col(Deployment.machine_id) == machine_id, col(Deployment.outcome) == "")
        .values(
            outcome="superseded",
            failure_reason=f"superseded by a new {kind}",
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session="fetch")
    )
