"""Allocation plumbing shared by the request path and the queue job.

- :class:`AllocationHub`: in-process wake-ups. Long-polls and event streams wait
  on it instead of polling the database in a loop. It is only a latency shortcut:
  every waiter also re-reads the database every few seconds, so changes made by
  another daemon on a shared PostgreSQL are seen too, and nothing is lost when a
  process restarts.
- Leases: per-role maximums and the rule for ``expires_at``. A lease starts when
  the machine is ready (``expires_at = ready_at + lease``). Until then the request
  is bounded by the same length from its creation (``expires_at = created_at +
  lease``), so a request that waits or deploys for longer than its lease expires
  rather than holding a queue slot or a half-deployed machine forever.
- :func:`free_machine`: hand the allocation's machine to the deploy engine for a
  wipe (``releasing``), from whatever point of its deploy it reached.
- :func:`record`: the allocation's rows in the event log (``kind="allocation"``).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from sqlmodel import Session

from provisiond import events
from provisiond.auth import Role
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.deploy import records as deploy
from provisiond.errors import Problem, ValidationFailed
from provisiond.errors import QuotaExceeded as QuotaExceeded  # re-exported
from provisiond.events import EventKind
from provisiond.lifecycle import State
from provisiond.models import Allocation, Deployment, Machine

HOUR = 3600
DAY = 24 * HOUR
#: The longest lease a role may ask for (at creation or renewal).
MAX_LEASE_S: dict[str, int] = {"ci": 1 * DAY, "operator": 7 * DAY, "admin": 7 * DAY}
#: Deploy tries (on different machines) before an allocation fails.
MAX_TRIES = 3


def check_lease(seconds: int, role: str, path: str = "lease") -> int:
    limit = MAX_LEASE_S.get(role, MAX_LEASE_S["ci"])
    if seconds > limit:
        raise ValidationFailed(
            [Problem(path, f"a lease of {seconds}s is longer than the {role} maximum {limit}s")],
            hint=f"ask for at most {limit // HOUR}h and renew it "
            "(POST /api/v1/allocations/{id}/renew) if you need longer",
        )
    return seconds


def role_rank(role: str) -> Role:
    return Role[role] if role in Role.__members__ else Role.ci


class AllocationHub:
    """Wake-ups within one process for waiters on one allocation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def subscribe(self, uuid: str) -> asyncio.Event:
        """An event set at the next :meth:`notify` for ``uuid``; call :meth:`unsubscribe` after."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(uuid, set()).add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, uuid: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(uuid, set())
            for item in [w for w in waiters if w[1] is event]:
                waiters.discard(item)
            if not waiters:
                self._waiters.pop(uuid, None)

    def notify(self, *uuids: str) -> None:
        """Wake everyone waiting on these allocations; safe from any thread."""
        with self._lock:
            woken = [w for u in uuids for w in self._waiters.get(u, ())]
        for loop, event in woken:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def notify_all(self) -> None:
        """Wake every waiter (another daemon changed allocations it did not name)."""
        with self._lock:
            uuids = list(self._waiters)
        self.notify(*uuids)


# One hub per Database object: the API and the allocation queue of one daemon share it.
_HUBS: weakref.WeakKeyDictionary[Database, AllocationHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_for(db: Database) -> AllocationHub:
    with _HUBS_LOCK:
        hub = _HUBS.get(db)
        if hub is None:
            hub = _HUBS[db] = AllocationHub()
        return hub


def record(
    session: Session,
    allocation: Allocation,
    event: str,
    message: str,
    *,
    actor: str,
    machine: Machine | None = None,
    request_id: str = "",
    details: dict[str, Any] | None = None,
    batch: events.Batch | None = None,
) -> None:
    fields: dict[str, Any] = {
        "machine": machine,
        "allocation_id": allocation.id,
        "actor": actor,
        "message": message,
        "details": {"allocation": allocation.uuid, "state": allocation.state, **(details or {})},
        "request_id": request_id,
    }
    if batch is not None:
        batch.add(EventKind.ALLOCATION, event, **fields)
    else:
        events.record(session, EventKind.ALLOCATION, event, flush=False, **fields)


def owns_machine(
    session: Session, allocation: Allocation, machine: Machine, latest: Any = deploy.UNKNOWN
) -> bool:
    """True when the machine's newest deploy is this allocation's (not a later owner's).

    ``latest``: the machine's newest deployment when the caller already read it."""
    assert machine.id is not None
    if latest is deploy.UNKNOWN:
        latest = deploy.latest_deployment(session, machine.id)
    return latest is not None and latest.allocation_id == allocation.id


#: Machine states an allocation's release sends to ``releasing`` (one move).
RELEASABLE = frozenset(
    {
        State.ALLOCATED,
        State.DEPLOYING,
        State.INSTALLING_AGENT,
        State.ACTIVE,
        State.DEPLOY_FAILED,
        State.RELEASE_FAILED,
    }
)


def free_machine(
    session: Session,
    allocation: Allocation,
    machine: Machine | None,
    *,
    actor: str,
    reason: str,
    settings: Settings,
    latest: Deployment | None = deploy.UNKNOWN,
    request_id: str = "",
    batch: events.Batch | None = None,
) -> bool:
    """Send the allocation's machine to ``releasing`` (wipe, then available); True if sent.

    A running deploy ends (``released``) in the same move. A machine that already
    moved on (released by an operator, or deploying for someone else) is left alone.
    ``latest``: the machine's newest deployment, when the caller read it already.
    """
    if machine is None or not owns_machine(session, allocation, machine, latest):
        return False
    if machine.state not in RELEASABLE:
        return False
    running = deploy.UNKNOWN
    if latest is not deploy.UNKNOWN:  # the newest one is the running one, if any runs
        running = latest if latest is not None and latest.outcome == "" else None
    deploy.start_release(
        session,
        machine,
        actor=actor,
        reason=reason,
        settings=settings,
        running=running,
        request_id=request_id,
        batch=batch,
    )
    return True
