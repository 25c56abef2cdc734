"""Lock takeover after a restart: a daemon succeeds the one that ran from its data dir.

Machine locks pass from owner to owner only when they expire (:mod:`provisiond.locks`),
so after a crash the machines the dead daemon was working on would sit idle for up to
``lock_ttl_s``. The one rule that proves an owner dead, whatever else shares the host
name or the pid: the dead daemon held an exclusive ``flock`` on
``<data_dir>/daemon.lock``, and the kernel drops it when the process dies.

So the engine, when it starts, takes that flock (and keeps it while it runs), reads
the predecessor's daemon id from ``<data_dir>/daemon.id``, writes its own there, and
drops the predecessor's locks at once. A second daemon started on a data dir that a
live one uses gets no flock and takes over nothing. Daemons with different data dirs
(on one host or many) never take each other's locks. The data dir must be on a local
file system: flock over NFS is not the same lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from provisiond import locks
from provisiond.db import Database
from provisiond.logging import get_logger

log = get_logger(__name__)


class Succession:
    """Holds ``<data_dir>/daemon.lock`` from :meth:`claim` until :meth:`close`."""

    def __init__(self, data_dir: Path, instance: str) -> None:
        self.data_dir = data_dir
        self.instance = instance
        self._fd: int | None = None

    def claim(self) -> str | None:
        """The predecessor's daemon id, once this process holds the data dir; else None."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log.warning("data_dir_in_use", data_dir=str(self.data_dir), instance=self.instance)
            return None
        self._fd = fd
        record = self.data_dir / "daemon.id"
        try:
            predecessor = record.read_text().strip() or None
        except FileNotFoundError:
            predecessor = None
        tmp = record.with_suffix(".tmp")
        tmp.write_text(f"{self.instance}\n")
        tmp.replace(record)
        return predecessor if predecessor != self.instance else None

    def take_over(self, db: Database) -> list[str]:
        """Claim the data dir and drop the predecessor's locks; the machines' names."""
        predecessor = self.claim()
        if predecessor is None:
            return []
        names = locks.take_over(db, predecessor)
        if names:
            log.info("locks_taken_over", predecessor=predecessor, machines=names)
        return names

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
