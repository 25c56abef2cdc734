"""Plain interval jobs on APScheduler's AsyncIOScheduler with its in-memory job store.

Reconcilers that the API also wakes (the allocation queue, and the deploy engine's
loop of the same shape) are not jobs: they run on :func:`provisiond.reconciler.run_loop`,
where a wake-up starts the next pass at once without rescheduling anything. Every job
here is an idempotent reconciler that coordinates with other daemons only through the
database, so a shared job store (which double-runs jobs) is never needed.
Blocking DB work runs in the default executor, off the event loop.
"""

from __future__ import annotations

import asyncio

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from provisiond.container import Services
from provisiond.deploy import reaper
from provisiond.logging import get_logger
from provisiond.machines import power_sync

log = get_logger(__name__)

#: How often the API's token uses are written to ``ApiToken.last_used_at``.
TOKEN_USE_FLUSH_S = 60.0


def build_scheduler(services: Services) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    settings = services.settings

    async def reap_job() -> None:
        cluster = services.cluster
        if not cluster.leads("reaper"):
            return  # another daemon runs it (provisiond.cluster)
        try:
            await asyncio.to_thread(
                reaper.reap,
                services.db,
                timeouts=settings.timeouts,
                actor="reaper",
                fence=lambda session: cluster.fence(session, "reaper"),
            )
        except Exception:  # a failed run is logged; the next run tries again
            log.exception("reaper_failed")

    async def power_sync_job() -> None:
        try:
            await power_sync.sync_power(services)
        except Exception:  # logged; the next run tries again
            log.exception("power_sync_failed")

    async def token_use_job() -> None:
        try:
            await asyncio.to_thread(services.token_use.flush, services.db)
        except Exception:  # logged; the uses stay noted for the next run
            log.exception("token_use_flush_failed")

    async def hosts_job() -> None:
        netboot = services.netboot
        if netboot is None:
            return
        try:
            await asyncio.to_thread(netboot.resync)
        except Exception:  # logged; the next run tries again
            log.exception("dnsmasq_hosts_resync_failed")

    for job, interval, name in (
        (reap_job, settings.reaper_interval_s, "reaper"),
        (hosts_job, settings.hosts_resync_interval_s, "dnsmasq_hosts"),
        (token_use_job, TOKEN_USE_FLUSH_S, "token_use"),
        (power_sync_job, settings.power_sync_interval_s, "power_sync"),
    ):
        scheduler.add_job(
            job, "interval", seconds=interval, id=name, max_instances=1, coalesce=True
        )
    return scheduler
