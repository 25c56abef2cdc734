"""The deploy engine's hold on a machine's lock while a step runs: heartbeat and fence.

A step may run far longer than ``lock_ttl_s`` (300 s): an agent install for up to
``timeouts.installing_agent`` (10 min), a wipe for up to ``timeouts.releasing``
(15 min). Two things keep a second daemon from running the same step meanwhile:

- the heartbeat: while the step runs, the lock is extended every third of the TTL
  (:func:`provisiond.locks.renew`), so it expires only when this daemon has not
  reached the database for two thirds of the TTL (it died, stalled, or lost the DB);
- the fence: every transaction that writes a step's result (a transition, a phase
  that moves the deploy on, a retry) first runs :meth:`LockGuard.hold`. When the lock
  expired and another owner took it, that owner may be running the same step: the
  result is not applied, and a ``step_discarded`` event says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from sqlmodel import Session

from provisiond import locks
from provisiond.db import Database
from provisiond.deploy.release import add_event
from provisiond.logging import get_logger
from provisiond.models import Machine

log = get_logger(__name__)


class LockGuard:
    def __init__(
        self, db: Database, owner: str, ttl_s: float, *, alive: Callable[[], bool] = lambda: True
    ) -> None:
        self.db = db
        self.owner = owner
        self.ttl_s = ttl_s
        #: False while this daemon may have been declared dead (no recent heartbeat):
        #: nothing is taken or written then (provisiond.cluster.node.ClusterNode.current).
        self.alive = alive

    def take(self, machine_id: int) -> bool:
        if not self.alive():
            return False
        return locks.try_acquire(self.db, machine_id, self.owner, ttl_s=self.ttl_s)

    def release(self, machine_id: int) -> bool:
        return locks.release(self.db, machine_id, self.owner)

    @contextlib.asynccontextmanager
    async def heartbeat(self, machine_id: int, name: str) -> AsyncIterator[None]:
        """Renew the lock every third of the TTL while the body runs."""
        task = asyncio.create_task(self._renew(machine_id, name))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew(self, machine_id: int, name: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                held = await asyncio.to_thread(
                    locks.renew, self.db, machine_id, self.owner, ttl_s=self.ttl_s
                )
            except Exception:  # the DB is away: try again next time; the fence decides
                log.exception("lock_renew_failed", machine=name, owner=self.owner)
                continue
            if not held:
                log.warning("lock_lost", machine=name, owner=self.owner)
                return

    def hold(self, session: Session, machine_id: int, result: str) -> bool:
        """The fence: in the caller's transaction, True while the lock is still ours.

        Otherwise the caller writes nothing more; the ``step_discarded`` event is
        written here, in the same transaction, naming the result and the new holder.
        """
        if self.alive() and locks.hold(session, machine_id, self.owner, ttl_s=self.ttl_s):
            return True
        machine = session.get(Machine, machine_id)
        holder = (machine.lock_owner if machine else None) or "no one"
        log.warning("step_discarded", machine_id=machine_id, result=result, holder=holder)
        if machine is not None:
            message = (
                f"step result not applied ({result}): the lock passed from {self.owner} "
                f"to {holder} while the step ran"
            )
            add_event(session, machine_id, machine.name, "step_discarded", message)
        return False
