"""The deploy engine: drives deploys, inspections and releases from the DB alone.

It is a reconciler. Each pass (every ``engine_interval_s``, or at once when
:meth:`Services.wake_deployer` is called) reads what needs doing from the machine
states and their running :class:`~provisiond.models.Deployment` rows:

===========================================  =======================================
machine (and its running deployment)         step
===========================================  =======================================
deploying / inspecting, no ``power_cycle``   one-time PXE boot device, power on or
                                             cycle through the BMC
installing_agent, or inspecting with a       SSH in (host key pinned to the one the
host key, no ``agent_installed``             OS reported), upload the agent and its
                                             token, install and start it as a service
installing_agent, ``agent_installed`` older  fail: "no agent heartbeat N s after
than ``agent_heartbeat_timeout_s``           install"
deploying a disk image, the ramdisk called   SSH in, write the image (``write_image``),
back; then ``disk_configured``               then persistent disk boot and power-cycle
                                             (``disk_boot``): :mod:`.disk_deploy`
releasing                                    wipe both ends of every disk and partition
                                             over SSH and verify, power off, available
===========================================  =======================================

Every step takes the machine's DB lock first (owner ``<daemon id>#<epoch>:engine``),
renews it while it runs, checks it before each side effect and writes only while it is
still its own (:mod:`.lock_guard`); a step's helpers use the guard the step began with
(``_STEP_GUARD``), never a later epoch's. Dead daemons' locks are dropped by the others
(:mod:`provisiond.cluster`) or by a successor on the same data dir (:mod:`.succession`).
Nothing lives only in memory: an interrupted step runs again (it is idempotent).
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from sqlalchemy import or_
from sqlmodel import col, select

from provisiond.cluster.clock import db_time
from provisiond.cluster.members import peer_urls
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.deploy.agent_reports import issue_agent_token
from provisiond.deploy.disk_deploy import DiskSteps
from provisiond.deploy.lock_guard import LockGuard
from provisiond.deploy.lost_boot import is_lost
from provisiond.deploy.power_on import failure, network_boot
from provisiond.deploy.release import ACTOR, Releaser, add_event
from provisiond.deploy.remote_ops import install_agent
from provisiond.deploy.repower import repower
from provisiond.deploy.ssh import HostKeyMismatch, SshError
from provisiond.deploy.steps import Work, step_for
from provisiond.deploy.succession import Succession
from provisiond.drivers.power.base import BmcManualAction
from provisiond.errors import ConcurrentChange, Conflict, InvalidTransition, ProvisiondError
from provisiond.lifecycle import State
from provisiond.logging import get_logger
from provisiond.machines import power as machine_power
from provisiond.machines.power_calls import PowerPolicy
from provisiond.models import Deployment, Machine, utcnow
from provisiond.networks import netns_of
from provisiond.reconciler import run_loop

log = get_logger(__name__)
PASS_GAP_S = 0.1  # passes start at least this far apart; wake-ups between them coalesce
STEP_BACKOFF_MAX_S = 60.0
_STEP_GUARD: ContextVar[LockGuard | None] = ContextVar("step_guard", default=None)


class DeployEngine:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._inflight: set[int] = set()
        #: machine id -> (failed steps in a row, monotonic time before which it waits).
        self._backoff: dict[int, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Machines whose step was still running when the engine stopped.
        self.unfinished: set[int] = set()
        self.releaser = Releaser(self)
        self.disk = DiskSteps(self)
        self._current_guard = self._guard()
        #: Boots power-cycled before this engine started may have called back to nobody.
        self.started_at = utcnow()

    async def run(self, stop: asyncio.Event) -> None:
        wakeup = self.services.deploy_wakeup
        succession = Succession(self.settings.data_dir, self.services.instance)
        try:
            await asyncio.to_thread(succession.take_over, self.services.db)
        except Exception:  # the predecessor's locks then expire by themselves
            log.exception("lock_takeover_failed")
        await run_loop(  # logs deploy_engine_pass_failed when a pass raises
            self.tick,
            wakeup=wakeup,
            interval_s=self.settings.engine_interval_s,
            stop=stop,
            name="deploy_engine_pass",
            min_gap_s=PASS_GAP_S,
        )
        self.unfinished = set(self._inflight)  # their threads may still be at work
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        succession.close()

    def _guard(self) -> LockGuard:
        cluster = self.services.cluster  # lock owners carry the daemon's epoch
        return LockGuard(self.services.db, cluster.owner("engine"), self.settings.lock_ttl_s,
                         alive=cluster.current)  # fmt: skip

    @property
    def guard(self) -> LockGuard:
        """The running step's guard (threads inherit it), else the current epoch's."""
        return _STEP_GUARD.get() or self._current_guard

    def busy(self) -> int:
        return len(self._inflight)  # steps running now (a drain waits for them)

    def abandon(self) -> None:
        """Declared dead: stop every step (a thread inside a blocking call ends it, but
        its result fails the fence: the lock owner carried the old epoch)."""
        for task in list(self._tasks):
            task.cancel()
        self._backoff.clear()

    async def tick(self) -> list[Work]:
        if not self.services.cluster.accepting():
            return []  # draining, rejoining, or no heartbeat lately: take no new work
        if self._current_guard.owner != self.services.cluster.owner("engine"):
            self._current_guard = self._guard()  # rejoined with a new epoch
        work = await asyncio.to_thread(self.scan)
        started = []
        for item in work:
            waits = self._backoff.get(item.machine_id, (0, 0.0))[1] > time.monotonic()
            if item.machine_id in self._inflight or waits:
                continue
            self._inflight.add(item.machine_id)
            task = asyncio.create_task(self._drive(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(item)
        return started

    async def drain(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait for the steps started so far (tests and shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def scan(self, now: datetime | None = None) -> list[Work]:
        now = now or utcnow()
        mine = col(Machine.lock_owner) == self.guard.owner
        states = [State.DEPLOYING, State.INSPECTING, State.INSTALLING_AGENT, State.RELEASING]
        out: list[Work] = []
        with self.services.db.read_session() as session:
            expired = col(Machine.lock_expires) < db_time(session)  # locks: the DB's clock
            busy = or_(col(Machine.lock_owner).is_(None), expired)
            rows = session.exec(
                select(Machine).where(col(Machine.state).in_(states), or_(busy, mine))
            ).all()
            running = deploy.running_deployments(
                session, [m.id for m in rows if m.id is not None and m.state != State.RELEASING]
            )
            disk = deploy.disk_image_ids(session, [r.image_id for r in running.values()])
            for machine in rows:
                assert machine.id is not None
                if machine.state == State.RELEASING:
                    out.append(Work(machine.id, machine.name, "release"))
                    continue
                record = running.get(machine.id)
                if record is None:
                    continue
                limit = self.settings.agent_heartbeat_timeout_s
                step = step_for(machine, record, now, limit, disk=record.image_id in disk)
                if step is None and self._lost(machine, record, now):
                    step = "repower"
                if step:
                    out.append(Work(machine.id, machine.name, step))
        return out

    async def _drive(self, item: Work) -> None:
        guard = self.guard
        _STEP_GUARD.set(guard)  # this task's context (and its threads') only
        try:
            if not await asyncio.to_thread(guard.take, item.machine_id):
                return
            try:
                step = {
                    "power": self._power_step,
                    "install": self._install_step,
                    "heartbeat_timeout": self._heartbeat_timeout,
                    "release": self.releaser.step,
                    "repower": self._repower_step,
                    "write_image": self.disk.write,
                    "disk_boot": self.disk.boot_disk,
                }[item.step]
                async with guard.heartbeat(item.machine_id, item.name):
                    await step(item)
            finally:
                await asyncio.to_thread(guard.release, item.machine_id)
            self._backoff.pop(item.machine_id, None)
        except Exception:
            # A step that raises (a bug, not a failed deploy) waits 2, 4 ... 60 s before it
            # is tried again, instead of spinning; the machine's deadline still applies.
            failed = self._backoff.get(item.machine_id, (0, 0.0))[0] + 1
            wait = min(STEP_BACKOFF_MAX_S, 2.0**failed)
            self._backoff[item.machine_id] = (failed, time.monotonic() + wait)
            log.exception("deploy_step_failed", machine=item.name, step=item.step, retry_s=wait)
        finally:
            self._inflight.discard(item.machine_id)
            self.services.wake_deployer()

    # --- helpers ----------------------------------------------------------------------

    def _fail(self, machine_id: int, reason: str, *, expect: set[str]) -> None:
        with self.services.db.transaction() as session:
            if not self.guard.hold(session, machine_id, f"fail: {reason}"):
                return
            machine = session.get(Machine, machine_id)
            if machine is None or machine.state not in expect:
                return
            try:
                deploy.fail(session, machine, reason=reason, actor=ACTOR, settings=self.settings)
            except (ConcurrentChange, InvalidTransition):
                return
            record = deploy.latest_deployment(session, machine_id)
            if record is not None:
                self._observe(record)
        log.info("deploy_failed", machine_id=machine_id, reason=reason)

    def _observe(self, record: Deployment) -> None:
        start = record.started_at
        end = record.finished_at or utcnow()
        self.services.metrics.deploy_seconds.labels(record.kind, record.outcome).observe(
            (end - start).total_seconds()
        )

    def _phase(self, machine_id: int, phase: str, *, deployment: str = "", **details: Any) -> None:
        with self.services.db.transaction() as session:
            if not self.guard.hold(session, machine_id, f"phase {phase}"):
                return
            machine = session.get(Machine, machine_id)
            record = (
                session.exec(select(Deployment).where(Deployment.uuid == deployment)).first()
                if deployment
                else None
            )
            boot_telemetry.record_phase(
                session,
                machine,
                phase,
                metrics=self.services.metrics,
                actor=ACTOR,
                deployment=record,
                **details,
            )

    def record_event(self, machine_id: int, name: str, event: str, message: str) -> None:
        with self.services.db.transaction() as session:
            add_event(session, machine_id, name, event, message)

    def netns_for(self, address: str) -> str | None:
        return netns_of(self.settings.networks, address)

    def power_policy(self) -> PowerPolicy:
        return PowerPolicy(call_timeout=self.settings.power_call_timeout_s)

    # --- power ----------------------------------------------------------------------

    def _ensure_keys(self, machine_id: int) -> None:
        """The deploy's key pair, made before the boot whose seed carries its public half."""
        with self.services.db.transaction() as session:
            record = deploy.running_deployment(session, machine_id)
            if record and not record.ssh_public_key and self.guard.hold(session, machine_id, "key"):
                deploy.ensure_keys(session, record, self.services.secrets)

    async def _power_step(self, item: Work) -> None:
        await asyncio.to_thread(self._ensure_keys, item.machine_id)
        expect = {State.DEPLOYING.value, State.INSPECTING.value}
        try:
            _, _, driver = await asyncio.to_thread(machine_power._driver, self.services, item.name)
        except Conflict as exc:  # no BMC: someone must power it on by hand
            await asyncio.to_thread(
                self.record_event, item.machine_id, item.name, "manual_power_cycle", exc.hint
            )
            await asyncio.to_thread(self._phase, item.machine_id, "power_cycle", manual=True)
            return
        if not self.guard.alive():  # paused past our heartbeat: the machine may be another's
            return
        try:
            policy = self.power_policy()
            action = await network_boot(self.services, item.name, driver, policy, actor=ACTOR)
        except BmcManualAction as exc:
            await asyncio.to_thread(
                self.record_event, item.machine_id, item.name, "manual_power_cycle", exc.message
            )
            await asyncio.to_thread(self._phase, item.machine_id, "power_cycle", manual=True)
            return
        except ProvisiondError as exc:  # the BMC's errors, the rack budget's OverBudget
            await asyncio.to_thread(self._fail, item.machine_id, failure(exc), expect=expect)
            return
        await asyncio.to_thread(self._phase, item.machine_id, "power_cycle", action=action.value)

    # --- agent install ----------------------------------------------------------------

    def _install_plan(self, machine_id: int) -> tuple[str, str, str, str, str, str] | None:
        """(address, host key, private key, agent URL, machine uuid, deployment uuid)."""
        with self.services.db.transaction() as session:
            machine = session.get(Machine, machine_id)
            if machine is None:
                return None
            record = deploy.running_deployment(session, machine_id)
            if record is None or not record.host_key or not record.address:
                return None
            if not self.guard.hold(session, machine_id, "agent install"):
                return None
            boot_telemetry.record_phase(
                session, machine, "agent_install", metrics=self.services.metrics, actor=ACTOR
            )
            agent_url = str(record.phases.get("agent_url") or "")  # and the other daemons':
            agent_url = peer_urls(session, self.settings.daemon_dead_after_s, agent_url)
            return (
                record.address,
                record.host_key,
                self.services.secrets.decrypt(record.ssh_private_key_encrypted),
                agent_url,
                machine.uuid,
                record.uuid,
            )

    async def _install_step(self, item: Work) -> None:
        expect = {State.INSTALLING_AGENT.value, State.INSPECTING.value}
        plan = await asyncio.to_thread(self._install_plan, item.machine_id)
        if plan is None:
            return
        address, host_key, private, agent_url, machine_uuid, record_uuid = plan
        token = await asyncio.to_thread(self._issue_token, item.machine_id)
        if token is None:  # the lock passed to another daemon: its step, not ours
            return
        env = (
            f"PROVISIOND_URL={agent_url}\nPROVISIOND_MACHINE={machine_uuid}\n"
            f"PROVISIOND_AGENT_TOKEN={token}\n"
        )
        budget = self.settings.timeouts.installing_agent
        if not self.guard.alive():
            return
        try:
            await self.services.executor.run(
                install_agent,
                address,
                host_key,
                private,
                env,
                attempts=self.settings.ssh_connect_attempts,
                netns=self.netns_for(address),
                timeout=budget,
                key=f"ssh:{address}",
                what=f"agent install on {item.name}",
            )
        except HostKeyMismatch as exc:
            await asyncio.to_thread(
                self._fail, item.machine_id, f"SSH host key mismatch: {exc.message}", expect=expect
            )
            return
        except (SshError, ProvisiondError) as exc:
            await asyncio.to_thread(
                self._fail, item.machine_id, f"agent install failed: {exc.message}", expect=expect
            )
            return
        await asyncio.to_thread(
            self._phase, item.machine_id, "agent_installed", deployment=record_uuid
        )

    def _issue_token(self, machine_id: int) -> str | None:
        """A new agent token, or None when the machine's lock is no longer ours."""
        with self.services.db.transaction() as session:
            machine = session.get(Machine, machine_id)
            assert machine is not None
            if not self.guard.hold(session, machine_id, "agent token"):
                return None
            return issue_agent_token(session, machine)

    async def _heartbeat_timeout(self, item: Work) -> None:
        limit = self.settings.agent_heartbeat_timeout_s
        await asyncio.to_thread(
            self._fail,
            item.machine_id,
            f"no agent heartbeat {limit:.0f} s after install",
            expect={State.INSTALLING_AGENT.value, State.INSPECTING.value},
        )

    async def _repower_step(self, item: Work) -> None:
        await asyncio.to_thread(repower, self, item.machine_id)

    def _lost(self, machine: Machine, record: Deployment, now: datetime) -> bool:
        wait = self.settings.lost_boot_s
        return is_lost(machine, record, now=now, started=self.started_at, wait_s=wait)
