"""Daemon rows: join, heartbeat at database time, and declaring the silent ones dead.

A daemon is dead when its heartbeat is older than ``dead_after_s`` by the database's
clock. Any live daemon may declare it so (one conditional UPDATE, so two daemons
declaring at once declare it once); in the same transaction it drops the dead
daemon's machine locks and writes a ``takeover`` event on each machine, so the deploy
engines of the live daemons take those machines at their next pass. A daemon that was
only paused and finds itself declared dead rejoins with a new epoch
(:class:`provisiond.cluster.node.ClusterNode`); its lock owners carry the epoch, so
nothing it started before the pause can pass a fence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from provisiond import locks
from provisiond.cluster.clock import bounded_lock_wait, db_time
from provisiond.db import Database
from provisiond.deploy.release import add_event
from provisiond.logging import get_logger
from provisiond.models import Daemon

log = get_logger(__name__)

LIVE = "live"
DRAINING = "draining"
STOPPED = "stopped"
DEAD = "dead"
RUNNING = (LIVE, DRAINING)
#: Rows of stopped and dead daemons are kept this long (for ``daemons list``).
KEEP_GONE = timedelta(days=1)


@dataclass(frozen=True)
class Me:
    """What a daemon says of itself when it joins."""

    id: str
    host: str
    pid: int
    version: str
    schema_revision: str
    api_url: str = ""
    boot_urls: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Takeover:
    daemon: str
    silent_s: float
    machines: list[str]


def join(db: Database, me: Me) -> int:
    """Insert this daemon's row, or rejoin (after it was declared dead): the new epoch."""
    with db.transaction() as session:
        bounded_lock_wait(session)
        now = db_time(session)
        row = session.get(Daemon, me.id, with_for_update=True)
        if row is None:
            session.add(
                Daemon(
                    id=me.id,
                    host=me.host,
                    pid=me.pid,
                    version=me.version,
                    schema_revision=me.schema_revision,
                    api_url=me.api_url,
                    boot_urls=dict(me.boot_urls),
                    networks=dict(me.networks),
                    state=LIVE,
                    epoch=1,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            return 1
        row.epoch += 1
        row.state = LIVE
        row.heartbeat_at = now
        row.reason = f"rejoined at {now:%H:%M:%SZ} with epoch {row.epoch} ({row.reason})"[:512]
        session.add(row)
        return row.epoch


def beat(db: Database, daemon: str, epoch: int) -> str | None:
    """Heartbeat: the row's state (live or draining) while it is still ours, else None.

    None means another daemon declared this one dead (or it was stopped): whatever it
    was doing is no longer its own.
    """
    with db.transaction() as session:
        bounded_lock_wait(session)
        now = db_time(session)
        result = session.execute(
            update(Daemon)
            .where(
                col(Daemon.id) == daemon,
                col(Daemon.epoch) == epoch,
                col(Daemon.state).in_(RUNNING),
            )
            .values(heartbeat_at=now)
            .returning(col(Daemon.state))
            .execution_options(synchronize_session=False)
        )
        state = result.scalar_one_or_none()
        return str(state) if state is not None else None


def set_state(
    db: Database, daemon: str, state: str, reason: str, *, epoch: int | None = None
) -> bool:
    """Move a running daemon's row to ``state`` (draining, stopped); False if it is not running."""
    with db.transaction() as session:
        query = update(Daemon).where(col(Daemon.id) == daemon, col(Daemon.state).in_(RUNNING))
        if epoch is not None:
            query = query.where(col(Daemon.epoch) == epoch)
        result = session.execute(
            query.values(state=state, reason=reason[:512]).execution_options(
                synchronize_session=False
            )
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def declare_dead(db: Database, by: str, dead_after_s: float) -> list[Takeover]:
    """Declare every running daemon silent for ``dead_after_s`` dead; drop its locks."""
    out: list[Takeover] = []
    with db.transaction() as session:
        bounded_lock_wait(session)
        now = db_time(session)
        cutoff = now - timedelta(seconds=dead_after_s)
        rows = session.execute(
            update(Daemon)
            .where(
                col(Daemon.state).in_(RUNNING),
                col(Daemon.heartbeat_at) < cutoff,
                col(Daemon.id) != by,
            )
            .values(
                state=DEAD,
                reason=f"no heartbeat for over {dead_after_s:.0f} s; declared dead by {by} "
                f"at {now:%H:%M:%SZ}",
            )
            .returning(col(Daemon.id), col(Daemon.heartbeat_at))
            .execution_options(synchronize_session=False)
        ).all()
        for daemon, heartbeat_at in rows:
            silent = (now - heartbeat_at).total_seconds()
            dropped = locks.drop_owned(session, daemon)
            for machine_id, name in dropped:
                add_event(
                    session,
                    machine_id,
                    name,
                    "takeover",
                    f"daemon {daemon} was silent for {silent:.0f} s and is declared dead by "
                    f"{by}; its lock is dropped, and the step it was running (if any) is redone "
                    "by the daemon that takes the machine next",
                )
            out.append(Takeover(daemon, silent, [n for _, n in dropped]))
        session.execute(
            delete(Daemon).where(
                col(Daemon.state).in_((STOPPED, DEAD)), col(Daemon.heartbeat_at) < now - KEEP_GONE
            )
        )
    for t in out:
        log.warning("daemon_declared_dead", daemon=t.daemon, silent_s=round(t.silent_s, 1),
                    by=by, machines=t.machines)  # fmt: skip
    return out


def live(session: Session, dead_after_s: float) -> list[str]:
    """Ids of the daemons that take new work: live (not draining), heard from in time."""
    cutoff = db_time(session) - timedelta(seconds=dead_after_s)
    rows = session.exec(
        select(Daemon.id).where(col(Daemon.state) == LIVE, col(Daemon.heartbeat_at) >= cutoff)
    ).all()
    return sorted(rows)


def live_urls(session: Session, dead_after_s: float) -> list[dict[str, Any]]:
    """The running daemons' API and boot URLs, newest heartbeat first."""
    cutoff = db_time(session) - timedelta(seconds=dead_after_s)
    rows = session.exec(
        select(Daemon)
        .where(col(Daemon.state).in_(RUNNING), col(Daemon.heartbeat_at) >= cutoff)
        .order_by(col(Daemon.heartbeat_at).desc())
    ).all()
    return [{"id": r.id, "api_url": r.api_url, "boot_urls": dict(r.boot_urls)} for r in rows]


def peer_urls(session: Session, dead_after_s: float, url: str) -> str:
    """``url`` then the same network's boot URL on every other running daemon,
    space-separated: what an agent tries in turn when the daemon it knows is gone."""
    rows = live_urls(session, dead_after_s)
    mine = url.rstrip("/")
    nets = {n for r in rows for n, u in r["boot_urls"].items() if u.rstrip("/") == mine}
    out = [url]
    for row in rows:
        for net in sorted(nets):
            other = row["boot_urls"].get(net)
            if other and other not in out:
                out.append(other)
    return " ".join(out)


def heartbeat_age(row: Daemon, now: datetime) -> float:
    return max(0.0, (now - row.heartbeat_at).total_seconds())
