"""The services bundle that daemon.py builds and hands to the API and the scheduler."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from provisiond.config import Settings
from provisiond.db import Database
from provisiond.drivers.power.pool import DriverPool
from provisiond.executor import BlockingExecutor
from provisiond.metrics import Metrics
from provisiond.secrets import SecretBox


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

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry)

    def wake_deployer(self) -> None:
        self.deploy_wakeup.set()

    def close(self) -> None:
        self.drivers.close()
        self.executor.shutdown()
        self.db.dispose()
