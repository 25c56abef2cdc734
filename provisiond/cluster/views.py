"""The daemons on this database, with their roles and the machines they work on."""

from __future__ import annotations

from sqlmodel import Session, col, select

from provisiond.cluster import leadership
from provisiond.cluster.clock import db_time
from provisiond.cluster.members import RUNNING, heartbeat_age, set_state
from provisiond.db import Database
from provisiond.errors import Conflict, NotFound
from provisiond.models import Daemon, Machine
from provisiond.schemas.daemons import DaemonOut


def _daemon_of(owner: str) -> str:
    """``host:pid:start[#epoch]:role...`` -> ``host:pid:start``."""
    head = owner.split("#", 1)[0]
    return ":".join(head.split(":")[:3])


def list_daemons(session: Session) -> list[DaemonOut]:
    now = db_time(session)
    rows = session.exec(select(Daemon).order_by(col(Daemon.started_at), col(Daemon.id))).all()
    roles: dict[str, list[str]] = {}
    for role, (holder, _epoch) in sorted(leadership.held_by(session).items()):
        roles.setdefault(_daemon_of(holder), []).append(role)
    machines: dict[str, list[str]] = {}
    locked = session.exec(
        select(Machine.name, Machine.lock_owner)
        .where(col(Machine.lock_owner).is_not(None), col(Machine.lock_expires) > now)
        .order_by(col(Machine.name))
    ).all()
    for name, owner in locked:
        machines.setdefault(_daemon_of(owner or ""), []).append(name)
    return [
        DaemonOut(
            id=r.id,
            host=r.host,
            pid=r.pid,
            version=r.version,
            schema_revision=r.schema_revision,
            state=r.state,
            epoch=r.epoch,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
            heartbeat_age_s=round(heartbeat_age(r, now), 1),
            api_url=r.api_url,
            boot_urls=dict(r.boot_urls),
            networks=dict(r.networks),
            roles=roles.get(r.id, []) if r.state in RUNNING else [],
            machines=machines.get(r.id, []),
            reason=r.reason,
        )
        for r in rows
    ]


def drain(db: Database, daemon: str, actor: str) -> DaemonOut:
    """Ask a running daemon to drain: it sees it at its next heartbeat, hands its work
    on and stops."""
    with db.read_session() as session:
        row = session.get(Daemon, daemon)
        if row is None:
            raise NotFound(
                f"no daemon {daemon!r} on this database",
                hint="list them with 'provisiond daemons list' (the id is host:pid:start)",
            )
        if row.state not in RUNNING:
            raise Conflict(
                f"daemon {daemon} is {row.state}, not running",
                hint="only a live daemon can be drained",
            )
    set_state(db, daemon, "draining", f"drain asked by {actor}")
    with db.read_session() as session:
        return next(d for d in list_daemons(session) if d.id == daemon)
