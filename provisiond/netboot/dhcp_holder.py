"""One DHCP server per provisioning network across several daemons (PostgreSQL only).

Each daemon that has the network (``dhcp_mode`` full or proxy) runs a
:class:`DhcpHolder`. Every ``ttl/3`` (``ttl`` = ``leader_ttl_s``) it calls
``leadership.lead(db, "dhcp:<network>", holder, ttl)`` in a thread with a timeout.
Only the daemon holding the role runs that network's dnsmasq:

- **gaining** the role (a free or expired row: ``lead`` never takes an unexpired
  one), it waits :data:`GRACE_S`, renews, re-renders the hosts folder from the
  database (``resync``) and starts dnsmasq with ``--leasefile-ro`` and
  ``--dhcp-script`` (:mod:`.lease_hook`): its leases are read from and written to the
  ``dhcplease`` table, so clients keep their addresses across a takeover;
- **losing** it (``lead`` answers None, the daemon leaves LIVE: drain, stop, lost
  membership) stops dnsmasq at once and hands the role back when it can;
- a **failed renewal** (database down, call timed out) keeps dnsmasq until the
  dead-man deadline, then stops it.

The dead-man timer (:class:`DeadMan`) is a thread, armed at every successful renewal
for ``start of that renewal + ttl - margin`` on the monotonic clock. When it fires it
kills dnsmasq by PID (SIGTERM, then SIGKILL) without the event loop, so a daemon
whose loop hangs cannot keep answering DHCP after its lease ran out. The taker waits
``expiry + GRACE_S``, so the two never answer at once while their clocks run at
the same rate.

The first layer is a process: dnsmasq runs under :mod:`.dhcp_guard`, started with
the time left on the role and told the new time left at every successful renewal
(the dead-man's deadline) through its stdin. It stops dnsmasq when that deadline
passes or the daemon dies (stdin EOF, PR_SET_PDEATHSIG), so neither a SIGSTOPped
daemon (every thread stopped, the dead-man's too) nor a SIGKILLed one whose dnsmasq
dropped to ``nobody`` (the kernel clears PR_SET_PDEATHSIG then) leaves a second DHCP
server answering. On SIGCONT the dead-man's wait has passed its monotonic deadline
(CLOCK_MONOTONIC counts through a stop): it fires at once and the supervisor does
not restart dnsmasq before a renewal moves the guard's deadline again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from provisiond.cluster import leadership
from provisiond.logging import get_logger
from provisiond.netboot import lease_hook
from provisiond.netboot.dhcp_deadman import DeadMan
from provisiond.netboot.lease_sink import LeaseSink
from provisiond.pg_session import libpq_url

if TYPE_CHECKING:
    from provisiond.cluster.node import ClusterNode
    from provisiond.db import Database
    from provisiond.netboot.dnsmasq import DnsmasqService

log = get_logger(__name__)

#: A taker waits this long after the expiry before it starts dnsmasq.
GRACE_S = 2.0
#: The dead-man fires this long before the lease's expiry (at most; ttl/5 when shorter).
MARGIN_S = 2.0
#: A holder whose dnsmasq stays unhealthy this long (or 3 TTLs) resigns the role.
UNHEALTHY_S = 30.0
#: Bounds the hosts resync and the hook's files before a start.
PREPARE_S = 30.0


def dhcp_role(network: str) -> str:
    return f"dhcp:{network}"


class DhcpHolder:
    """Holds (or waits for) one network's DHCP role and runs its dnsmasq only then."""

    def __init__(
        self,
        service: DnsmasqService,
        db: Database,
        node: ClusterNode,
        *,
        resync: Callable[[], object],
        ttl_s: float | None = None,
        grace_s: float = GRACE_S,
    ) -> None:
        self.service = service
        self.net = service.net
        self.db = db
        self.node = node
        self.role = dhcp_role(self.net.name)
        self.ttl_s = ttl_s if ttl_s is not None else node.leader_ttl_s
        self.margin_s = min(MARGIN_S, self.ttl_s / 5)
        self.grace_s = grace_s
        self._resync = resync
        self.epoch: int | None = None
        self.holder: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._serving = False
        self._starting: asyncio.Task[None] | None = None
        self.sink: LeaseSink | None = None
        self._base_args = tuple(service.supervisor.extra_args)
        service.supervisor.guard_lease_s = self.ttl_s - self.margin_s
        self._unhealthy_since: float | None = None
        self._sit_out_until = 0.0
        self.deadman = DeadMan(self.net.name, lambda: service.supervisor.pid, self._expired)

    @property
    def running(self) -> bool:
        """dnsmasq is running or being restarted by its supervisor."""
        return self._serving or self.service.supervisor.pid is not None

    @property
    def holding(self) -> bool:
        return self.epoch is not None

    # --- life -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"dhcp-holder-{self.net.name}")

    async def close(self, *, resign: bool = True) -> None:
        """Stop dnsmasq, then hand the role back (shutdown): the next taker starts at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_dnsmasq("daemon stopping")
        await asyncio.to_thread(self._close_sink)
        await asyncio.to_thread(self.deadman.close)
        if resign and self.holder is not None:
            with contextlib.suppress(Exception):
                await self._call(leadership.resign, self.db, self.role, self.holder)
        self.epoch = None

    def lost(self) -> None:
        """``node.on_lost``: the daemon was declared dead; dnsmasq stops now."""
        self.epoch = None
        self.deadman.disarm()
        pid = self.service.supervisor.pid
        if pid is not None:  # at once; the supervisor's stop waits for it (no restart)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._schedule_stop("membership lost")

    # --- the renewal loop -------------------------------------------------------------

    async def _call(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.ttl_s / 3)

    async def _run(self) -> None:
        period = self.ttl_s / 3
        while True:  # until cancelled by close(); each round bounded by the timeouts
            started = time.monotonic()
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dhcp_holder_round_failed", network=self.net.name)
            await asyncio.sleep(max(0.05, started + period - time.monotonic()))

    async def _round(self) -> None:
        if time.monotonic() < self._sit_out_until:
            return  # resigned because dnsmasq would not run here: let another daemon try
        if self.node.state != "live" or not self.node.current():
            if self.holding or self.running:
                await self._give_up(f"daemon {self.node.state}")
            return
        holder = self.node.holder
        if self.holder is not None and holder != self.holder and self.holding:
            await self._give_up("daemon rejoined with a new epoch")
        started = time.monotonic()
        try:
            epoch = await self._call(leadership.lead, self.db, self.role, holder, self.ttl_s)
        except Exception as exc:
            self._renewal_failed(exc)
            return
        if epoch is None:
            if self.holding or self.running:
                await self._stop_dnsmasq("another daemon holds the DHCP role")
                self.epoch = None
            return
        assert isinstance(epoch, int)
        if epoch != self.epoch or holder != self.holder:
            self.epoch, self.holder = epoch, holder
            log.info("dhcp_role_taken", network=self.net.name, holder=holder, epoch=epoch,
                     grace_s=self.grace_s)  # fmt: skip
            self._arm(started + self.ttl_s - self.margin_s)
            await asyncio.sleep(self.grace_s)  # the old holder's dead-man has surely fired
            return await self._round()  # renew after the grace, then start
        self._arm(started + self.ttl_s - self.margin_s)
        if await self._resigned_if_unhealthy():
            return
        if not self.running:
            # In a task of its own: the start waits (bounded) for dnsmasq's "started"
            # line, and the renewals must go on meanwhile.
            self._starting = asyncio.create_task(self._start_dnsmasq())

    async def _resigned_if_unhealthy(self) -> bool:
        """A holder whose dnsmasq does not come up (port taken, no such interface here)
        hands the role on after UNHEALTHY_S, and sits out twice the TTL before competing."""
        if self.service.supervisor.healthy or not self.running:
            self._unhealthy_since = None
            return False
        now = time.monotonic()
        self._unhealthy_since = self._unhealthy_since or now
        if now - self._unhealthy_since < max(UNHEALTHY_S, 3 * self.ttl_s):
            return False
        log.warning("dhcp_role_resigned_unhealthy", network=self.net.name,
                    reason=self.service.supervisor.reason)  # fmt: skip
        await self._give_up("dnsmasq is not healthy on this daemon")
        self._unhealthy_since, self._sit_out_until = None, now + 2 * self.ttl_s
        return True

    def _arm(self, deadline: float) -> None:
        """Both layers: the dead-man thread and the guard process, same deadline."""
        self.deadman.arm(deadline)
        self.service.supervisor.extend(deadline - time.monotonic())

    def _renewal_failed(self, exc: Exception) -> None:
        deadline = self.deadman.deadline
        left = None if deadline is None else deadline - time.monotonic()
        if not (self.running or self.holding):
            log.info("dhcp_role_try_failed", network=self.net.name, error=type(exc).__name__)
            return
        log.warning(
            "dhcp_role_renewal_failed",
            network=self.net.name,
            error=f"{type(exc).__name__}: {exc}"[:300],
            seconds_left=None if left is None else round(left, 1),
            hint="dnsmasq keeps running until the role's expiry, then stops",
        )
        if self.running and (left is None or left <= 0):
            self._schedule_stop("DHCP role expired")

    async def _start_dnsmasq(self) -> None:
        assert self.holder is not None
        self._serving = True  # from here on, a stop must stop it
        try:
            await asyncio.wait_for(asyncio.to_thread(self._prepare, self.holder), PREPARE_S)
        except Exception:  # the next round tries again
            self._serving = False
            log.exception("dhcp_holder_start_failed", network=self.net.name)
            return
        if not self.holding or self._task is None:
            self._serving = False
            return
        await self.service.start()
        log.info("dhcp_holder_serving", network=self.net.name, holder=self.holder,
                 epoch=self.epoch, pid=self.service.supervisor.pid)  # fmt: skip

    def _prepare(self, holder: str) -> None:
        """Blocking: hosts from the DB, the lease hook for this holder, dnsmasq's args."""
        self._resync()
        self.service.paths.create()
        self._close_sink()
        sock = self.service.paths.root / "lease.sock"
        self.sink = LeaseSink(self.db, sock, network=self.net.name, role=self.role, holder=holder)
        self.sink.start()
        hook = lease_hook.install(
            self.service.paths.root,
            dsn=libpq_url(self.db.url),
            network=self.net.name,
            role=self.role,
            holder=holder,
            netns=f"/proc/{os.getpid()}/ns/net" if self.net.netns else None,
            socket=sock,
        )
        self.service.supervisor.extra_args = (
            *self._base_args,
            "--leasefile-ro",
            f"--dhcp-script={hook}",
        )

    async def _give_up(self, why: str) -> None:
        await self._stop_dnsmasq(why)
        holder, self.epoch = self.holder, None
        self.deadman.disarm()
        if holder is not None:
            with contextlib.suppress(Exception):
                await self._call(leadership.resign, self.db, self.role, holder)

    async def _stop_dnsmasq(self, why: str) -> None:
        self.deadman.disarm()
        starting = self._starting
        if starting is not None and not starting.done() and starting is not asyncio.current_task():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        if not self.running:
            return
        log.info("dhcp_holder_stopping", network=self.net.name, why=why)
        self._serving = False
        await self.service.stop()
        await asyncio.to_thread(self._close_sink)

    def _close_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.close()

    def _expired(self) -> None:
        """From the dead-man thread: ask the loop to stop the supervisor (no restart)."""
        self.epoch = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._schedule_stop, "DHCP role expired")

    def _schedule_stop(self, why: str) -> None:
        self._stopping = asyncio.get_running_loop().create_task(self._stop_dnsmasq(why))
