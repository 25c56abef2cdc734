"""The services bundle that daemon.py builds and hands to the API and the scheduler."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry
from sqlmodel import Session

from provisiond.auth import TokenUse
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.drivers.power.pool import DriverPool
from provisiond.executor import BlockingExecutor
from provisiond.metrics import Metrics
from provisiond.models import utcnow
from provisiond.reconciler import Wakeup
from provisiond.secrets import SecretBox


class NetbootHooks(Protocol):
    """What the rest of the daemon needs of the network-boot runtime."""

    def health(self) -> dict[str, str]: ...

    def hosts_changed(self, names: Iterable[str], removed: Iterable[str] = ()) -> int: ...

    def resync(self) -> dict[str, dict[str, int]]: ...


class ClusterHooks(Protocol):
    """What the rest of the daemon asks of the cluster (provisiond.cluster.node)."""

    def current(self) -> bool: ...

    def accepting(self) -> bool: ...

    def leads(self, role: str) -> bool: ...

    def fence(self, session: Session, role: str) -> bool: ...

    def owns(self, key: str) -> bool: ...

    def owner(self, role: str) -> str: ...


class Solo:
    """One daemon alone (SQLite, tools and tests): every role and every machine is its own."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def current(self) -> bool:
        return True

    def accepting(self) -> bool:
        return True

    def leads(self, role: str) -> bool:
        return True

    def fence(self, session: Session, role: str) -> bool:
        return True

    def owns(self, key: str) -> bool:
        return True

    def owner(self, role: str) -> str:
        return f"{self.instance}:{role}"


def daemon_id(
    host: str | None = None, pid: int | None = None, start: datetime | None = None
) -> str:
    """``host:pid:start``, e.g. ``rack-a:4242:20250101T101500.123456Z``: one per daemon.

    The start time (to the microsecond) tells a restarted daemon from its predecessor
    even when the pid comes round again; lock owners begin with it (see
    :mod:`provisiond.locks`). The host part is cut to 64 characters so an owner fits
    ``Machine.lock_owner`` (128).
    """
    host = (host if host is not None else socket.gethostname())[:64]
    pid = pid if pid is not None else os.getpid()
    return f"{host}:{pid}:{(start or utcnow()):%Y%m%dT%H%M%S.%fZ}"


@dataclass
class Services:
    settings: Settings
    db: Database
    secrets: SecretBox
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    #: This daemon's id (:func:`daemon_id`), the prefix of its lock owners.
    instance: str = field(default_factory=daemon_id)
    executor: BlockingExecutor = field(default_factory=BlockingExecutor)
    drivers: DriverPool = field(default_factory=DriverPool)
    metrics: Metrics = field(init=False)
    #: Set to wake the deploy engine at once (after a deploy/release/callback commit).
    deploy_wakeup: Wakeup = field(default_factory=Wakeup)
    #: Set to run the allocation queue's next pass at once (after a request is queued).
    allocation_wakeup: Wakeup = field(default_factory=Wakeup)
    #: Token uses noted by the API, written to ``ApiToken.last_used_at`` every minute.
    token_use: TokenUse = field(default_factory=TokenUse)
    #: The running dnsmasq supervisors (set by the daemon; None in tools and tests).
    netboot: NetbootHooks | None = None
    #: This daemon's part in a cluster (set by the daemon on PostgreSQL; alone otherwise).
    cluster: ClusterHooks = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry)
        self.cluster = Solo(self.instance)

    def wake_deployer(self) -> None:
        self.deploy_wakeup.set()

    def wake_allocator(self) -> None:
        self.allocation_wakeup.set()

    def hosts_changed(self, names: Iterable[str], removed: Iterable[str] = ()) -> None:
        """After a commit that touched machines or NICs: update dnsmasq's host files."""
        if self.netboot is not None:
            self.netboot.hosts_changed(names, removed)

    def close(self) -> None:
        self.drivers.close()
        self.executor.shutdown()
        self.db.dispose()
