"""On SQLite, one daemon: ``serve`` holds an exclusive flock beside the database file.

SQLite has one writer and no way for two daemons to tell each other apart, so a
second ``serve`` on the same file refuses to start (with the first one's pid), and
the cluster machinery never runs there. The kernel drops the lock when the holder
dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from provisiond.errors import ConfigError


def sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).resolve()


class SqliteServeLock:
    def __init__(self, url: str) -> None:
        self.path = sqlite_file(url)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.path is None:
            return
        lock = self.path.with_name(self.path.name + ".serve.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another provisiond serve (pid {holder}) is running on the SQLite "
                f"database {self.path}",
                hint="SQLite serves one daemon: stop that one first, or run several daemons "
                "on one PostgreSQL database (README: Running several daemons)",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
