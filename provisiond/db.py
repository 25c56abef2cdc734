"""Engine and sessions, on SQLite (WAL) or PostgreSQL, and the schema check.

SQLite write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction
that reads and then writes fails at once with "database is locked" when another
writer got in between, whereas IMMEDIATE waits for the busy timeout. Readers use
:meth:`Database.read_session`, which begins a plain deferred transaction and so
never waits for writers (WAL).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, Update, bindparam, event, inspect, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, SQLModel, create_engine

import provisiond.models  # noqa: F401  (registers the tables)
from provisiond import lanes
from provisiond.errors import DatabaseNotReady
from provisiond.lanes import Lane
from provisiond.logging import thread_stack
from provisiond.pg_session import POSTGRES_SESSION
from provisiond.schema_versions import known_revisions

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic's "Context impl SQLiteImpl" chatter is noise in the daemon's JSON log.
logging.getLogger("alembic").setLevel(logging.WARNING)

#: The newest migration's revision: what this provisiond's code expects to find.
SCHEMA_HEAD = "0013_cluster"
log = logging.getLogger(__name__)
_READ_ONLY = "provisiond_read_only"
_GATE = "provisiond_write_gate"


class DatabaseOnEventLoop(RuntimeError):
    """A programming error: database I/O on the thread that runs an asyncio loop."""


def _refuse_on_event_loop(engine: Engine) -> None:
    # A query on the event loop's thread blocks every request for its duration; a
    # write waiting there for SQLite's write slot can even wait for a request that
    # needs the loop to commit (a 30 s freeze until the busy timeout). Refused when
    # the transaction begins (before the write slot; after the pool checkout), so
    # tests catch it: async code uses asyncio.to_thread.
    @event.listens_for(engine, "begin")
    def _on_begin(_conn: Connection) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise DatabaseOnEventLoop(
            "database call on the event loop's thread; run it with asyncio.to_thread"
        )


#: A writer that waited this long for the write slot logs what holds it.
SLOW_WRITE_SLOT_S = 5.0


def _slow_write_slot(holder: list[Any], busy_timeout_s: float) -> float:
    """Log what holds the write slot, when one transaction has held it for long (not
    when many short ones queue); at most once per :data:`SLOW_WRITE_SLOT_S`."""
    waited = min(SLOW_WRITE_SLOT_S, busy_timeout_s)
    ident, since, last_log = holder
    now = time.monotonic()
    if ident is None or now - since < SLOW_WRITE_SLOT_S or now - last_log < SLOW_WRITE_SLOT_S:
        return waited
    holder[2] = now
    names = {t.ident: t.name for t in threading.enumerate()}
    log.warning(
        "sqlite write slot busy: a writer waited %.1fs; one transaction has held the slot "
        "for %.1fs, begun by thread %s (FastAPI may commit it on another); that thread "
        "now:\n%s",
        waited,
        now - since,
        names.get(ident, ident),
        "\n".join(thread_stack(ident, limit=15)) or "(gone)",
    )
    return waited


class _WriteGate:
    """One writer at a time inside this process, queued on a lock instead of in
    SQLite's busy handler: that handler sleeps in growing steps (up to 100 ms), so
    under contention writers idle while the database is free (measured: allocation
    p99 2.2 s with the busy handler alone, 0.6 s with this gate). Other processes
    (the CLI, a second daemon) still meet the busy handler. Shared by every lane's
    engine: SQLite has one write slot per file, whichever pool the connection is in."""

    def __init__(self, busy_timeout_s: float) -> None:
        self.busy_timeout_s = busy_timeout_s
        self.lock = threading.Lock()
        # Who took the write slot and when: a writer kept waiting for it logs them
        # (with the holder thread's stack), so a stall says what it waited behind. The
        # ident is the thread that began the transaction; FastAPI may commit it on
        # another one.
        self.holder: list[Any] = [None, 0.0, 0.0]  # thread ident, taken at, last logged at

    def attach(self, engine: Engine) -> None:
        busy_timeout_s = self.busy_timeout_s
        gate, holder = self.lock, self.holder

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin event, not the driver, open transactions.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            read_only = conn.get_execution_options().get(_READ_ONLY, False)
            if read_only:
                conn.exec_driver_sql("BEGIN")
                return
            if not gate.acquire(timeout=min(SLOW_WRITE_SLOT_S, busy_timeout_s)):
                waited = _slow_write_slot(holder, busy_timeout_s)
                if not gate.acquire(timeout=max(0.0, busy_timeout_s - waited)):
                    raise sqlite3.OperationalError(
                        f"database is locked: no write slot in this process after "
                        f"{busy_timeout_s:g}s"
                    )
            holder[0:2] = [threading.get_ident(), time.monotonic()]
            conn.info[_GATE] = True
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                conn.info.pop(_GATE, None)
                holder[0:2] = [None, 0.0]
                gate.release()
                raise

        def _end(conn: Connection) -> None:
            if conn.info.pop(_GATE, False):
                holder[0:2] = [None, 0.0]
                gate.release()

        event.listen(engine, "commit", _end)
        event.listen(engine, "rollback", _end)

        @event.listens_for(engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            # Safety net: a connection that went back to the pool mid-transaction (an
            # invalidated connection) must not keep the write slot.
            if record.info.pop(_GATE, False):
                holder[0:2] = [None, 0.0]
                gate.release()


@functools.cache
def _update_by_id(model: type[SQLModel], names: frozenset[str], guarded: bool) -> Update:
    """UPDATE model SET <names> WHERE id = :w_id [AND state = :w_state], built once per
    model, set of columns and guard (building it costs more than running it). Values
    bind as ``v_<column>``, the WHERE as ``w_*``, so a guarded column may also be set."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    where = [table.c.id == bindparam("w_id")]
    if guarded:
        where.append(table.c.state == bindparam("w_state"))
    return update(table).where(*where).values({n: bindparam(f"v_{n}") for n in sorted(names)})


def update_loaded(
    session: Session, row: SQLModel, values: dict[str, Any], *, state: str | None = None
) -> bool:
    """Write ``values`` to the stored ``row`` by its id in one UPDATE (only while its
    ``state`` column still holds ``state``, when given); on success the loaded object takes
    the values as committed, without a re-read. False when no row matched."""
    params = {f"v_{name}": value for name, value in values.items()}
    params["w_id"] = row.id  # type: ignore[attr-defined]
    if state is not None:
        params["w_state"] = state
    result = session.execute(_update_by_id(type(row), frozenset(values), state is not None), params)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for name, value in values.items():
        set_committed_value(row, name, value)
    return True


#: Connection pools per lane (pool_size, max_overflow). Each lane's admitted work is
#: bounded (provisiond.api.admission), so a lane's pool covers its own work and a
#: flood in one lane cannot take another's connections. SQLite connections are cheap;
#: PostgreSQL's are not (its default max_connections is 100, for every daemon).
SQLITE_POOLS = {Lane.API: (16, 112), Lane.BOOT: (8, 56), Lane.SYSTEM: (8, 40)}
#: PostgreSQL: at most 40 + 16 + 24 = 80 connections per daemon, under the server's
#: default max_connections of 100; the system lane has room for the deploy engine's
#: concurrent steps and the scheduler.
POSTGRES_POOLS = {Lane.API: (10, 30), Lane.BOOT: (4, 12), Lane.SYSTEM: (8, 16)}
#: How long a session waits for a pooled connection before the request gets a 503.
POOL_TIMEOUT_S = 10.0


_AFTER_COMMIT = "provisiond_after_commit"


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run ``fn`` once ``session``'s transaction has committed; never if it rolls back.

    A use case registers its side effects here (dnsmasq host files, waking the deploy
    engine), so it owns them with its transaction, whoever commits: the API's write
    session after the route returns, or a ``with db.transaction()`` block."""
    session.info.setdefault(_AFTER_COMMIT, []).append(fn)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for fn in session.info.pop(_AFTER_COMMIT, []):
        try:
            fn()
        except Exception:  # the commit stands; a failed side effect is logged
            log.exception("after-commit hook %r failed", fn)


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction: Any) -> None:
    # Only when the whole transaction rolls back: a rolled-back savepoint
    # (begin_nested) keeps what the outer transaction registered.
    if previous_transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)


class Database:
    """Owns the engine. Pass it down; nothing imports a global engine."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if url == "sqlite:///:memory:":
            # each pool would open its own empty database
            raise ValueError("an in-memory SQLite database cannot be shared by the daemon's pools")
        self._echo = echo
        self._gate = _WriteGate(busy_timeout_s) if self.is_sqlite else None
        self._busy_timeout_s = busy_timeout_s
        if self.is_sqlite and url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._engines: dict[Lane, tuple[Engine, Engine]] = {}
        self._engines_lock = threading.Lock()
        #: The system lane's engine: migrations, the CLI, the daemon's own jobs.
        self.engine = self._engines_for(Lane.SYSTEM)[0]

    def _engines_for(self, which: Lane) -> tuple[Engine, Engine]:
        """The lane's (read-write, read-only) engines, made on first use."""
        pair = self._engines.get(which)
        if pair is not None:
            return pair
        with self._engines_lock:
            pair = self._engines.get(which)
            if pair is None:
                pair = self._make_engines(which)
                self._engines[which] = pair
        return pair

    def _make_engines(self, which: Lane) -> tuple[Engine, Engine]:
        kwargs: dict[str, Any] = {"echo": self._echo, "pool_timeout": POOL_TIMEOUT_S}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": self._busy_timeout_s}
            kwargs["pool_size"], kwargs["max_overflow"] = SQLITE_POOLS[which]
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"], kwargs["max_overflow"] = POSTGRES_POOLS[which]
            kwargs["connect_args"] = POSTGRES_SESSION
        engine = create_engine(self.url, **kwargs)
        _refuse_on_event_loop(engine)
        if self._gate is not None:
            self._gate.attach(engine)
        return engine, engine.execution_options(**{_READ_ONLY: True})

    def engines(self) -> list[Engine]:
        """Every lane's engine made so far (events listened on one see its read-only twin)."""
        return [engine for engine, _ro in list(self._engines.values())]

    def connections_in_use(self) -> dict[str, int]:
        """Checked-out connections per lane."""
        out: dict[str, int] = {}
        for which, (engine, _ro) in list(self._engines.items()):
            checkedout = getattr(engine.pool, "checkedout", None)
            out[which.value] = int(checkedout()) if checkedout is not None else 0
        return out

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        """A read-write session from the current lane's pool; on SQLite its transaction
        takes the write lock up front."""
        return Session(self._engines_for(lanes.current())[0], expire_on_commit=False)

    def read_session(self) -> Session:
        """A session for reads only, from the current lane's pool; it never waits
        behind writers."""
        return Session(self._engines_for(lanes.current())[1], expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A read-write session that commits on success and rolls back on error."""
        with self.session() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    # --- schema -----------------------------------------------------------

    # alembic (10 MB of modules) is imported only to migrate: the daemon's start-up check
    # reads the version row and compares it with SCHEMA_HEAD (a test holds the two equal).

    def _alembic_config(self) -> Any:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["engine"] = self.engine
        return cfg

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        head: str | None = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        return head

    def current_revision(self) -> str | None:
        """The revision stored in ``alembic_version``; None for an empty database."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def upgrade(self) -> tuple[str | None, str | None]:
        """Migrate to the newest schema; returns (before, after) revisions."""
        from alembic import command

        before = self.current_revision()
        command.upgrade(self._alembic_config(), "head")
        return before, self.current_revision()

    def check_schema(self) -> None:
        current, head = self.current_revision(), SCHEMA_HEAD
        if current == head:
            return
        if current is not None and current not in known_revisions():
            # A newer daemon migrated it (a rolling upgrade under way): never run old code
            # on a schema it does not know.
            newer = self._version_of_schema(current)
            run = f"provisiond {newer} or newer" if newer else "the provisiond that migrated it"
            raise DatabaseNotReady(
                f"the database {self.safe_url} is at revision {current}, newer than this "
                f"provisiond knows (it knows up to {head})",
                hint=f"run {run}; a schema is never downgraded under running daemons",
            )
        state = "is empty" if current is None else f"is at revision {current}"
        raise DatabaseNotReady(
            f"the database {self.safe_url} {state}; this provisiond needs revision {head}",
            hint="run 'provisiond db upgrade' (with the same --config), then start again",
        )

    def _version_of_schema(self, revision: str) -> str | None:
        """The version a daemon that ran on ``revision`` reported (the daemon table)."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT version FROM daemon WHERE schema_revision = :r "
                        "ORDER BY started_at DESC LIMIT 1"
                    ),
                    {"r": revision},
                ).first()
        except SQLAlchemyError:
            return None
        return str(row[0]) if row is not None else None

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        for engine, _ro in list(self._engines.values()):
            engine.dispose()
