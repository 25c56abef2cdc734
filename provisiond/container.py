"""The services bundle that daemon.py builds and hands to the API and the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry

from provisiond.auth import TokenUse
from provisiond.config import Settings
from provisiond.db import Database
from provisiond.drivers.power.pool import DriverPool
from provisiond.executor import BlockingExecutor
from provisiond.metrics import Metrics
from provisiond.secrets import SecretBox


class NetbootHooks(Protocol):
    """What the rest of the daemon needs of the network-boot runtime."""

    def health(self) -> dict[str, str]: ...

    def hosts_changed(self, names: Iterable[str], removed: Iterable[str] = ()) -> int: ...


@dataclass
class Services:
    settings: Settings
    db: Database
    secrets: SecretBox
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    #: Name of this daemon instance, used as lock owner and event actor prefix.
    instance: str = "provisiond"
    executor: BlockingExecutor = field(default_factory=BlockingExecutor)
    drivers: DriverPool = field(default_factory=DriverPool)
    metrics: Metrics = field(init=False)
    #: Set to wake the deploy engine at once (after a deploy/release/callback commit).
    deploy_wakeup: threading.Event = field(default_factory=threading.Event)
    #: Token uses noted by the API, written to ``ApiToken.last_used_at`` every minute.
    token_use: TokenUse = field(default_factory=TokenUse)
    #: The running dnsmasq supervisors (set by the daemon; None in tools and tests).
    netboot: NetbootHooks | None = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry)

    def wake_deployer(self) -> None:
        self.deploy_wakeup.set()

    def hosts_changed(self, names: Iterable[str], removed: Iterable[str] = ()) -> None:
        """After a commit that touched machines or NICs: update dnsmasq's host files."""
        if self.netboot is not None:
            self.netboot.hosts_changed(names, removed)

    def close(self) -> None:
        self.drivers.close()
        self.executor.shutdown()
        self.db.dispose()
