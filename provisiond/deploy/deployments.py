"""Read views of a machine's deployments: what ``machines show`` prints per phase."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from provisiond.deploy.records import host_key_fingerprint
from provisiond.deploy.telemetry import phase_table
from provisiond.machines.service import find
from provisiond.models import Deployment, Image


def to_view(session: Session, record: Deployment) -> dict[str, Any]:
    """A deployment without its private key: phases as seconds since the power-cycle."""
    image = session.get(Image, record.image_id) if record.image_id else None
    return {
        "uuid": record.uuid,
        "kind": record.kind,
        "attempt": record.attempt,
        "image": image.name if image else None,
        "address": record.address,
        "host_key_fingerprint": host_key_fingerprint(record.host_key),
        "outcome": record.outcome or "running",
        "failure_reason": record.failure_reason,
        "started_at": record.started_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "phases": [{"phase": p, "seconds": s} for p, s in phase_table(record)],
        # A disk-image deploy's chosen disk and write figures (provisiond.deploy.disk_deploy).
        "root_disk": record.phases.get("root_disk"),
        "image_write": record.phases.get("image_write"),
    }


def list_for_machine(session: Session, ident: str, *, limit: int = 10) -> list[dict[str, Any]]:
    machine = find(session, ident)
    rows = session.exec(
        select(Deployment)
        .where(Deployment.machine_id == machine.id)
        .order_by(col(Deployment.id).desc())
        .limit(max(1, min(limit, 100)))
    ).all()
    return [to_view(session, r) for r in rows]
