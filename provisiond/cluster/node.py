"""One daemon's part in the cluster: heartbeat, takeover, roles, the ring, drain.

Every ``daemon_heartbeat_s`` the node, in order:

1. heartbeats its row (:func:`.members.beat`). If the row is no longer its own (the
   others declared it dead while it was paused or cut off), it drops everything it was
   doing (the ``on_lost`` callbacks: the engine cancels its steps, DHCP stops dnsmasq)
   and rejoins with a new epoch;
2. declares dead every daemon silent for ``daemon_dead_after_s`` and drops its locks;
3. reads the live members (the ring for power sync);
4. takes or renews the singleton roles (:data:`SINGLETONS`) while it is live.

:meth:`current` is also a local lease: it turns False once no heartbeat has
succeeded for ``daemon_dead_after_s - 2 x daemon_heartbeat_s`` by this process's
monotonic clock (which counts through SIGSTOP), so a daemon that wakes from a pause
stops acting before its first database round trip tells it it was declared dead,
and before the others' declaration (at ``daemon_dead_after_s``) can hand its
machines on.

Every database call runs in a thread with a timeout: a hung connection delays a
heartbeat but never the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session, col

from provisiond import locks
from provisiond.cluster import leadership, members, ring
from provisiond.cluster.members import DRAINING, LIVE, STOPPED, Me
from provisiond.db import Database
from provisiond.errors import DatabaseNotReady
from provisiond.logging import get_logger
from provisiond.models import Machine

log = get_logger(__name__)
T = TypeVar("T")

#: How long joining may take at start-up (later calls get two heartbeats).
START_TIMEOUT_S = 30.0
#: Jobs exactly one daemon runs.
SINGLETONS = ("reaper", "allocation_queue")
#: Declared dead by the others; joining again (tried at every heartbeat until it works).
REJOINING = "rejoining"


class ClusterNode:
    def __init__(
        self,
        db: Database,
        me: Me,
        *,
        heartbeat_s: float,
        dead_after_s: float,
        leader_ttl_s: float,
        drain_timeout_s: float,
    ) -> None:
        self.db = db
        self.me = me
        self.solo = db.dialect == "sqlite"
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.leader_ttl_s = leader_ttl_s
        self.drain_timeout_s = drain_timeout_s
        self.valid_s = max(heartbeat_s, dead_after_s - 2 * heartbeat_s)
        self.epoch = 0
        self.state = "starting"
        self._beat_ok = float("-inf")
        self.members: tuple[str, ...] = (me.id,)
        #: role -> (its epoch, monotonic time of the last renewal)
        self.roles: dict[str, tuple[int, float]] = {}
        #: Called (in the loop) when this daemon lost its membership: drop all work.
        self.on_lost: list[Callable[[], None]] = []
        #: How many steps are still running (the engine's), for a drain.
        self.busy: Callable[[], int] = lambda: 0
        self._stop: asyncio.Event | None = None

    # --- what the rest of the daemon asks ---------------------------------------------

    @property
    def holder(self) -> str:
        return f"{self.me.id}#{self.epoch}"

    def owner(self, role: str) -> str:
        """A lock owner for ``role``: carries the epoch, so a rejoined daemon is new."""
        return f"{self.holder}:{role}"

    def current(self) -> bool:
        if self.state not in (LIVE, DRAINING):
            return False
        return self.solo or time.monotonic() - self._beat_ok < self.valid_s

    def accepting(self) -> bool:
        return self.state == LIVE and self.current()

    def leads(self, role: str) -> bool:
        if self.solo:
            return self.accepting()
        held = self.roles.get(role)
        if held is None or not self.current():
            return False
        return time.monotonic() - held[1] < self.leader_ttl_s * 2 / 3

    def fence(self, session: Session, role: str) -> bool:
        if self.solo:
            return self.current()
        held = self.roles.get(role)
        return held is not None and leadership.hold(session, role, self.holder, held[0])

    def owns(self, key: str) -> bool:
        if self.solo:
            return True
        # Not current (woken from a pause): its member list is stale, and its share may
        # already be another daemon's.
        return self.current() and ring.owner(key, self.members) == self.me.id

    # --- running ----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, limit_s: float = 0.0) -> T:
        limit = limit_s or 2 * self.heartbeat_s
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), limit)

    async def start(self) -> None:
        sent = time.monotonic()
        try:  # a slow database at start-up gets longer than a heartbeat
            self.epoch = await self._call(members.join, self.db, self.me, limit_s=START_TIMEOUT_S)
        except TimeoutError:
            raise DatabaseNotReady(
                f"the database {self.db.safe_url} did not answer within {START_TIMEOUT_S:.0f} s "
                "when this daemon joined",
                hint="check that the database is up and reachable, then start again",
            ) from None
        self._beat_ok = sent
        self.state = LIVE
        log.info("daemon_joined", daemon=self.me.id, epoch=self.epoch, solo=self.solo)
        if self.solo:
            # The SQLite file lock (provisiond.cluster.sqlite_lock) proves every other
            # daemon row on this file is a dead predecessor: its locks go at once.
            await self._call(members.declare_dead, self.db, self.me.id, 0.0)
        else:
            await self._round()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await asyncio.wait({stopped}, timeout=self.heartbeat_s)
                if stop.is_set():
                    break
                try:
                    await self.tick()
                except Exception:  # logged; the next heartbeat tries again
                    log.exception("cluster_tick_failed", daemon=self.me.id)
        finally:
            stopped.cancel()

    async def tick(self) -> None:
        sent = time.monotonic()  # the lease counts from the send: the row's time is later
        state = await self._call(members.beat, self.db, self.me.id, self.epoch)
        if state is None:
            if self.state in (LIVE, DRAINING, REJOINING):  # rejoining: the last try failed
                await self._lost()
            return
        self._beat_ok = sent
        if state == DRAINING and self.state == LIVE:
            self.drain("asked through the API")
        if not self.solo:
            await self._round()

    async def _round(self) -> None:
        await self._call(members.declare_dead, self.db, self.me.id, self.dead_after_s)
        live = await self._call(self._live)
        self.members = tuple(live) if self.state != LIVE or self.me.id in live else (
            *live, self.me.id)  # fmt: skip
        for role in SINGLETONS:
            if self.state != LIVE:
                break
            asked = time.monotonic()  # the row's expiry counts from no earlier than this
            epoch = await self._call(leadership.lead, self.db, role, self.holder, self.leader_ttl_s)
            if epoch is None:
                self.roles.pop(role, None)
            else:
                if role not in self.roles:
                    log.info("role_taken", role=role, holder=self.holder, epoch=epoch)
                self.roles[role] = (epoch, asked)

    def _live(self) -> list[str]:
        with self.db.read_session() as session:
            return members.live(session, self.dead_after_s)

    async def _lost(self) -> None:
        if self.state == DRAINING:  # it was leaving anyway: drop its work and stop
            self._drop_work()
            self.state = STOPPED
            if self._stop is not None:
                self._stop.set()
            return
        if self.state != REJOINING:  # once; a rejoin that failed is only tried again
            log.warning(
                "daemon_membership_lost",
                daemon=self.me.id,
                epoch=self.epoch,
                hint="another daemon declared this one dead (paused or cut off from the "
                "database for too long); its work was taken over, and it rejoins",
            )
            self.state = REJOINING
            self._drop_work()
        sent = time.monotonic()
        self.epoch = await self._call(members.join, self.db, self.me)
        self._beat_ok = sent
        self.state = LIVE
        log.info("daemon_rejoined", daemon=self.me.id, epoch=self.epoch)

    def _drop_work(self) -> None:
        self.roles.clear()
        for callback in list(self.on_lost):
            try:
                callback()
            except Exception:
                log.exception("on_lost_failed")

    # --- drain and stop -----------------------------------------------------------------

    def drain(self, why: str) -> None:
        """Stop taking work, hand the roles on, let running steps end, then stop."""
        if self.state != LIVE:
            return
        self.state = DRAINING
        log.info("daemon_draining", daemon=self.me.id, why=why)
        asyncio.get_running_loop().create_task(self._drain(why))

    async def _drain(self, why: str) -> None:
        with contextlib.suppress(Exception):
            await self._call(members.set_state, self.db, self.me.id, DRAINING,
                             f"draining: {why}")  # fmt: skip
        await self._resign_all()
        for _ in range(max(1, int(self.drain_timeout_s / 0.2))):  # bounded: drain_timeout_s
            if not self.busy():
                break
            await asyncio.sleep(0.2)
        log.info("daemon_drained", daemon=self.me.id, still_running=self.busy())
        if self._stop is not None:
            self._stop.set()

    async def _resign_all(self) -> None:
        for role in list(self.roles):
            self.roles.pop(role, None)
            with contextlib.suppress(Exception):
                await self._call(leadership.resign, self.db, role, self.holder)

    async def close(self, reason: str = "stopped", *, keep: Collection[int] = ()) -> None:
        """At a stop: roles handed back, locks dropped, the row marked stopped.

        ``keep``: machines whose step may still be running in a thread; their locks
        expire by themselves (``lock_ttl_s``) rather than let another daemon redo a
        step that is not over.
        """
        if self.state not in (LIVE, DRAINING):
            return
        self.state = STOPPED
        await self._resign_all()
        with contextlib.suppress(Exception):
            await self._call(self._stop_row, reason, set(keep))
        log.info("daemon_left", daemon=self.me.id, epoch=self.epoch, kept_locks=sorted(keep))

    def _stop_row(self, reason: str, keep: set[int]) -> None:
        members.set_state(self.db, self.me.id, STOPPED, reason, epoch=self.epoch)
        with self.db.transaction() as session:
            session.execute(
                update(Machine)
                .where(locks.owned_by(self.me.id), col(Machine.id).not_in(keep))
                .values(lock_owner=None, lock_expires=None)
                .execution_options(synchronize_session=False)
            )
