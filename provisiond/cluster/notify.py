"""Wake-ups across daemons on PostgreSQL: ``NOTIFY provisiond`` at commit, one listener each.

**Sending** (:func:`install`). Every transaction of an installed database that writes
an allocation, a machine's state, a deployment or an event row sends one
``pg_notify('provisiond', <payload>)`` just before it commits, in the same
transaction: PostgreSQL delivers it only if the commit succeeds. Writes are seen
generically, so no writer can forget: the unit of work (``after_flush``: new and
changed ORM objects) and every statement run through a session (``do_orm_execute``:
the Core and ORM bulk ``INSERT``/``UPDATE`` most writers use). The payload is small
JSON (:func:`payload`)::

    {"a": ["<allocation uuid>", ...] | "*",  # allocations changed; "*": any (too many,
                                             # or an UPDATE not by a loaded row's id)
     "q": 1,   # the allocation queue should run (an allocation or a machine's state)
     "d": 1,   # deploy work may be waiting (a machine's state, a deployment)
     "e": 1}   # event-log rows were written (live consoles)

**Receiving** (:class:`Listener`). One thread per daemon holds its own connection
(psycopg, autocommit), ``LISTEN provisiond``, and turns each notification into the
in-process wake-ups: the allocation waiters (long-polls, event streams), the
allocation queue (which runs on the daemon holding its role, wherever the request
came in), the deploy engine and the live consoles. Its own daemon's notifications
come back too; they are harmless. When the database goes away the thread reconnects
with backoff (``notify_listener_reconnect``) and, since notifications sent meanwhile
are lost, wakes everything once. The wake-ups stay a latency shortcut: every waiter
still re-reads the database on its own timer.

On SQLite there is one daemon: nothing is installed and no listener runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from provisiond.allocations.leases import hub_for
from provisiond.console import hub as console_hub
from provisiond.container import Services
from provisiond.db import Database
from provisiond.logging import get_logger
from provisiond.models import Allocation, Deployment, Event, Machine
from provisiond.pg_session import libpq_url

log = get_logger(__name__)

CHANNEL = "provisiond"
#: More changed allocations than this in one transaction are sent as "*" (any).
MAX_UUIDS = 100
#: The listener's bounded waits: per ``notifies()`` round, and between pings.
WAIT_S = 0.5
PING_S = 15.0
BACKOFF_S = (0.2, 10.0)
_KEY = "provisiond_notify"
_ALLOCATION = Allocation.__table__.name  # type: ignore[attr-defined]
_MACHINE = Machine.__table__.name  # type: ignore[attr-defined]
_DEPLOYMENT = Deployment.__table__.name  # type: ignore[attr-defined]
_EVENT = Event.__table__.name  # type: ignore[attr-defined]
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

#: URLs (password hidden) of the installed databases; sessions on others send nothing.
_INSTALLED: set[str] = set()
_LOCK = threading.Lock()


class Changes:
    """What one transaction changed, as far as waiters elsewhere care."""

    def __init__(self) -> None:
        self.uuids: set[str] = set()
        self.any_allocation = False
        self.queue = self.deploy = self.events = False

    def __bool__(self) -> bool:
        return bool(self.uuids or self.any_allocation or self.queue or self.deploy or self.events)


def payload(changes: Changes) -> str:
    """The NOTIFY payload: short JSON, always far under PostgreSQL's 8000 bytes."""
    out: dict[str, Any] = {}
    if changes.any_allocation or len(changes.uuids) > MAX_UUIDS:
        out["a"] = "*"
    elif changes.uuids:
        out["a"] = sorted(changes.uuids)
    out.update({k: 1 for k, on in (("q", changes.queue), ("d", changes.deploy),
                                   ("e", changes.events)) if on})  # fmt: skip
    return json.dumps(out, separators=(",", ":"))


def install(db: Database) -> bool:
    """Send notifications from ``db``'s write transactions (PostgreSQL only); True if so."""
    if db.dialect != "postgresql":
        return False
    with _LOCK:
        _INSTALLED.add(db.safe_url)
        if not event.contains(Session, "after_flush", _after_flush):
            event.listen(Session, "after_flush", _after_flush)
            event.listen(Session, "do_orm_execute", _on_execute)
            event.listen(Session, "before_commit", _before_commit)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
    return True


def uninstall(db: Database) -> None:
    with _LOCK:
        _INSTALLED.discard(db.safe_url)


def _changes(session: Session) -> Changes | None:
    """This session's collected changes; None when its database is not installed."""
    found: Changes | None = session.info.get(_KEY)
    if found is not None:
        return found
    bind = session.bind
    if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
        return None
    if bind.url.render_as_string(hide_password=True) not in _INSTALLED:
        return None
    found = session.info[_KEY] = Changes()
    return found


def _after_flush(session: Session, _flush: UOWTransaction) -> None:
    objects = [*session.new, *session.dirty]
    if not any(isinstance(o, Allocation | Machine | Deployment | Event) for o in objects):
        return
    changes = _changes(session)
    if changes is None:
        return
    for obj in objects:
        if isinstance(obj, Allocation):
            changes.uuids.add(obj.uuid)
            changes.queue = True
        elif isinstance(obj, Machine):
            if obj in session.new or inspect(obj).attrs.state.history.has_changes():
                changes.queue = changes.deploy = True
        elif isinstance(obj, Deployment):
            changes.deploy = True
        elif isinstance(obj, Event):
            changes.events = True


def _on_execute(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update):
        return
    table = getattr(getattr(state.statement, "table", None), "name", None)
    if table not in (_ALLOCATION, _MACHINE, _DEPLOYMENT, _EVENT):
        return
    changes = _changes(state.session)
    if changes is None:
        return
    params: Any = state.parameters
    rows: list[Mapping[str, Any]] = (
        [p for p in params if isinstance(p, Mapping)] if isinstance(params, list | tuple)
        else [params] if isinstance(params, Mapping) else []
    ) or [{}]  # fmt: skip
    if table == _EVENT:
        changes.events = True
    elif table == _DEPLOYMENT:
        changes.deploy = True
    elif table == _MACHINE:
        if state.is_insert or "state" in _set_columns(state.statement, rows):
            changes.queue = changes.deploy = True
    else:
        changes.queue = True
        for row in rows:
            uuid = row.get("uuid") or _loaded_uuid(state.session, row)
            if uuid:
                changes.uuids.add(str(uuid))
            else:
                changes.any_allocation = True


def _set_columns(statement: Any, rows: list[Mapping[str, Any]]) -> set[str]:
    """The columns an UPDATE sets: its ``values()``, else (ORM bulk by key) the rows' keys."""
    values = getattr(statement, "_values", None) or {}
    names = {str(getattr(k, "key", k)) for k in values}
    return names or {str(k) for row in rows for k in row}


def _loaded_uuid(session: Session, row: Mapping[str, Any]) -> str | None:
    """The uuid of the allocation an UPDATE by id writes, when the session has it loaded
    (``update_loaded`` binds the id as ``w_id``; an ORM bulk UPDATE by key as ``id``)."""
    ident = row.get("w_id", row.get("id"))
    if ident is None:
        return None
    loaded = session.identity_map.get(session.identity_key(Allocation, ident))
    return loaded.uuid if isinstance(loaded, Allocation) else None


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction() or _changes(session) is None:
        return
    session.flush()  # the commit flushes after this hook: collect its changes now
    changes = session.info.pop(_KEY, None)
    if changes:
        session.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload(changes)})


def _after_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_KEY, None)


# --- receiving ----------------------------------------------------------------------------


class Listener:
    """``LISTEN provisiond`` in a daemon thread; each notification calls ``on_notify``.

    ``on_notify(payload)`` gets the decoded JSON (``{"a": "*", "q": 1, "d": 1, "e": 1}``
    after a reconnect: anything may have changed meanwhile). It runs on the listener's
    thread and must be quick and thread-safe.
    """

    def __init__(self, db: Database, on_notify: Callable[[dict[str, Any]], None]) -> None:
        self.db = db
        self.on_notify = on_notify
        self._conninfo = libpq_url(db.url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set while connected and listening (tests wait on it).
        self.listening = threading.Event()
        self.reconnects = 0
        self.received = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay, first = BACKOFF_S[0], True
        while not self._stop.is_set():
            try:
                self._listen(missed=not first)
            except Exception as exc:  # the database went away (or a bug): never end the thread
                if self.listening.is_set():  # it was up: start the backoff over
                    delay = BACKOFF_S[0]
                self.listening.clear()
                self.reconnects += 1
                log.warning(
                    "notify_listener_reconnect",
                    database=self.db.safe_url,
                    error=type(exc).__name__,
                    detail=str(exc).splitlines()[0][:200] if str(exc) else "",
                    retry_in_s=delay,
                    hint="wake-ups from other daemons wait for the reconnect; "
                    "waiters still re-read the database on their own timers",
                )
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                first = False
                continue
            return
        self.listening.clear()

    def _listen(self, *, missed: bool) -> None:
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=5,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        ) as conn:  # fmt: skip
            conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            if missed:
                log.info("notify_listener_reconnected", database=self.db.safe_url)
                self._deliver('{"a":"*","q":1,"d":1,"e":1}')
            pinged = time.monotonic()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=WAIT_S):
                    self._deliver(note.payload)
                    if self._stop.is_set():
                        break
                if time.monotonic() - pinged >= PING_S:  # a dead peer shows here at the latest
                    conn.execute("SELECT 1")
                    pinged = time.monotonic()
        self.listening.clear()

    def _deliver(self, raw: str) -> None:
        self.received += 1
        try:
            decoded = json.loads(raw)
            if not isinstance(decoded, dict):
                raise ValueError("not an object")
        except ValueError:
            log.info("notify_payload_ignored", payload=raw[:200])
            return
        try:
            self.on_notify(decoded)
        except Exception:  # one bad wake-up must not end the listener
            log.exception("notify_dispatch_failed")


def wake(services: Services, note: dict[str, Any]) -> None:
    """Turn one notification into this daemon's in-process wake-ups."""
    changed = note.get("a")
    hub = hub_for(services.db)
    if changed == "*":
        hub.notify_all()
    elif isinstance(changed, list):
        hub.notify(*(str(u) for u in changed))
    if note.get("q"):
        services.wake_allocator()
    if note.get("d"):
        services.wake_deployer()
    if note.get("e"):
        console_hub.poke(services)


def start_listener(services: Services) -> Listener | None:
    """This daemon's listener (PostgreSQL), sending installed; None on SQLite."""
    if not install(services.db):
        return None
    listener = Listener(services.db, lambda note: wake(services, note))
    listener.start()
    return listener
