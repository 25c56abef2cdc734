"""Deploying a whole-disk image: the ramdisk stage, the image write, the boot from disk.

A deploy whose image is a ``disk`` image runs in two boots of one ``deploying`` state:

======================  ===========================================================
phases                  what happens
======================  ===========================================================
power_cycle ... seed    the machine PXE-boots the deploy ramdisk (the inspection
                        image) with this deploy's NoCloud seed
ramdisk_callback        the ramdisk phones home with its host key (pinned); the
                        machine stays ``deploying``
disk_selected,          the engine SSHes into the ramdisk and runs the image writer
image_download,         (``provisiond/agent/image_writer.py``): root-device hints,
image_written,          streamed gzip with Range resume, sha256 of what is served,
disk_configured         the NoCloud ``seedfrom`` file written into the target's root
disk_boot               persistent boot device ``disk`` through the BMC, power-cycle
os_seed, os_callback    cloud-init on the disk fetches the seed and phones home with
                        the OS's host key: ``deploying -> installing_agent`` and on
                        as for any deploy
======================  ===========================================================

A network boot after ``disk_boot`` (a machine whose firmware keeps the NIC first)
gets the ``local`` script, as an ``active`` machine does. Each engine step is
idempotent: a write interrupted by a daemon restart is written again from the start.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from provisiond.deploy import records as deploy
from provisiond.deploy import telemetry as boot_telemetry
from provisiond.deploy.remote_ops import WRITER_PATH, reboot_ramdisk, run_image_writer
from provisiond.deploy.ssh import HostKeyMismatch, SshError
from provisiond.drivers.power.base import BmcError, BmcManualAction, BootDevice, PowerAction
from provisiond.errors import Conflict, ProvisiondError
from provisiond.lifecycle import State
from provisiond.logging import get_logger
from provisiond.machines import power as machine_power
from provisiond.machines import power_calls as power
from provisiond.models import Allocation, Deployment, Image, Machine, utcnow

if TYPE_CHECKING:
    from provisiond.deploy.engine import DeployEngine
    from provisiond.deploy.steps import Work

log = get_logger(__name__)

RAMDISK_CALLBACK = "ramdisk_callback"
DISK_CONFIGURED = "disk_configured"
DISK_BOOT = "disk_boot"
#: ``phases`` key (not a phase) with the write's figures: bytes, seconds, mb_s, resumed.
IMAGE_WRITE = "image_write"
#: Phases the writer reports, in order (each recorded once, as it arrives).
WRITER_PHASES = ("disk_selected", "image_download", "image_written", DISK_CONFIGURED)
#: Room the writer's SSH step leaves before the machine's deadline, and its floor.
WRITE_MIN_S = 60.0


def is_disk_image(image: Image | None) -> bool:
    return image is not None and image.kind == "disk"


def on_disk(record: Deployment | None) -> bool:
    """Whether the machine was sent to boot its disk (the ramdisk stage is over)."""
    return record is not None and DISK_BOOT in record.phases


def root_device_hints(session: Session, machine: Machine, record: Deployment) -> dict[str, Any]:
    """The machine's root-device hints, overridden key by key by the allocation's."""
    hints = dict(machine.root_device or {})
    alloc = session.get(Allocation, record.allocation_id) if record.allocation_id else None
    if alloc is not None:
        hints.update(alloc.root_device or {})
    return hints


@dataclass(frozen=True)
class WritePlan:
    address: str
    host_key: str
    private_key: str
    command: str
    deployment: str
    timeout: float


class DiskSteps:
    """The engine's ``write_image`` and ``disk_boot`` steps (like the Releaser)."""

    def __init__(self, engine: DeployEngine) -> None:
        self.engine = engine
        self.services = engine.services

    # --- write ------------------------------------------------------------------------

    def plan(self, machine_id: int) -> WritePlan | None:
        with self.services.db.transaction() as session:
            machine = session.get(Machine, machine_id)
            record = deploy.running_deployment(session, machine_id)
            if machine is None or record is None or not record.host_key or on_disk(record):
                return None
            image = session.get(Image, record.image_id) if record.image_id else None
            if image is None or not is_disk_image(image):
                return None
            if not self.engine.guard.hold(session, machine_id, "image write"):
                return None
            base = str(record.phases.get("agent_url") or "")
            if not base:  # no seed fetched, so no URL the machine reaches the daemon at
                reason = "the deploy ramdisk called back without fetching its seed (user-data)"
                deploy.fail(
                    session, machine, reason=reason, actor="engine", settings=self.engine.settings
                )
                return None
            argv = [
                "python3", WRITER_PATH,
                "--url", f"{base}/images/{image.disk}",
                "--sha256", image.sha256.get("disk", ""),
                "--raw-size", str(image.virtual_size),
                "--min-disk", str(max(image.min_disk_size, image.virtual_size)),
                "--hints", json.dumps(root_device_hints(session, machine, record)),
            ]  # fmt: skip
            if image.configured_by != "agent":  # an "agent" image phones home on its own
                argv += ["--seed-url", f"{base}/meta/{machine.uuid}/"]
            left = (machine.deadline - utcnow()) if machine.deadline else timedelta(hours=1)
            return WritePlan(
                record.address,
                record.host_key,
                self.services.secrets.decrypt(record.ssh_private_key_encrypted),
                shlex.join(argv),
                record.uuid,
                max(WRITE_MIN_S, left.total_seconds()),
            )

    async def write(self, item: Work) -> None:
        plan = await asyncio.to_thread(self.plan, item.machine_id)
        if plan is None:
            return
        expect = {State.DEPLOYING.value}
        failure: list[str] = []

        def on_event(event: dict[str, Any]) -> None:  # in the executor's thread
            kind = event.get("event")
            if kind == "phase" and event.get("phase") in WRITER_PHASES:
                self._writer_phase(item.machine_id, plan.deployment, event)
            elif kind == "error":
                failure.append(_failure(event))

        if not self.engine.guard.alive():  # no recent heartbeat: not ours to write now
            return
        try:
            await self.services.executor.run(
                run_image_writer,
                plan.address,
                plan.host_key,
                plan.private_key,
                plan.command,
                on_event,
                attempts=self.engine.settings.ssh_connect_attempts,
                netns=self.engine.netns_for(plan.address),
                run_timeout=plan.timeout,
                timeout=plan.timeout + 60,
                key=f"ssh:{plan.address}",
                what=f"image write on {item.name}",
            )
        except HostKeyMismatch as exc:
            failure.append(f"SSH host key mismatch: {exc.message}")
        except (SshError, ProvisiondError) as exc:
            failure.append(f"image write failed: {exc.message}")
        if failure:
            await asyncio.to_thread(self.engine._fail, item.machine_id, failure[0], expect=expect)
            return
        await self.boot_disk(item, plan)

    def _writer_phase(self, machine_id: int, deployment: str, event: dict[str, Any]) -> None:
        """Record one of the writer's phases; ``image_written``'s figures also go on the
        deployment (``phases["image_write"]``), where ``machines show`` reads them."""
        phase = str(event["phase"])
        details = {k: v for k, v in event.items() if k not in ("event", "phase")}
        with self.services.db.transaction() as session:
            if not self.engine.guard.hold(session, machine_id, f"phase {phase}"):
                return
            machine = session.get(Machine, machine_id)
            record = deploy.running_deployment(session, machine_id)
            if record is None or record.uuid != deployment:
                return
            if phase in ("disk_selected", "image_written"):
                key = "root_disk" if phase == "disk_selected" else IMAGE_WRITE
                record.phases = {**record.phases, key: details}
            boot_telemetry.record_phase(
                session, machine, phase, metrics=self.services.metrics, actor="engine",
                deployment=record, **details,
            )  # fmt: skip

    # --- boot the disk ----------------------------------------------------------------

    async def boot_disk(self, item: Work, plan: WritePlan | None = None) -> None:
        """Persistent boot device ``disk``, then power-cycle; records ``disk_boot``.

        Without a BMC the ramdisk reboots itself (over SSH, when the write just ran):
        the firmware's own boot order must then reach the disk, or the ``local`` script.
        """
        expect = {State.DEPLOYING.value}
        if not self.engine.guard.alive():  # no recent heartbeat: not ours to power now
            return
        try:
            _, _, driver = await asyncio.to_thread(machine_power._driver, self.services, item.name)
        except Conflict:
            how = "no BMC; the ramdisk rebooted itself"
            if plan is not None:
                try:
                    await self.services.executor.run(
                        reboot_ramdisk, plan.address, plan.host_key, plan.private_key,
                        netns=self.engine.netns_for(plan.address), timeout=60,
                        key=f"ssh:{plan.address}", what=f"reboot of {item.name}",
                    )  # fmt: skip
                except (SshError, ProvisiondError) as exc:
                    how = f"no BMC, and the ramdisk did not reboot: {exc.message}; reboot it"
            await asyncio.to_thread(self._booted_disk, item.machine_id, how)
            return
        executor, policy = self.services.executor, self.engine.power_policy()
        uefi = await asyncio.to_thread(self._uefi, item.machine_id)
        try:
            await power.set_boot_device(
                executor, driver, BootDevice.DISK, persistent=True, uefi=uefi, policy=policy
            )
            await power.power(executor, driver, PowerAction.CYCLE, policy)
        except BmcManualAction as exc:
            await asyncio.to_thread(self._booted_disk, item.machine_id, f"manual: {exc.message}")
            return
        except (BmcError, ProvisiondError) as exc:
            reason = f"BMC power-cycle into the disk failed: {exc.message}"
            await asyncio.to_thread(self.engine._fail, item.machine_id, reason, expect=expect)
            return
        await asyncio.to_thread(self._booted_disk, item.machine_id, "bmc")

    def _uefi(self, machine_id: int) -> bool:
        with self.services.db.read_session() as session:
            machine = session.get(Machine, machine_id)
            return machine is not None and machine.firmware == "uefi"

    def _booted_disk(self, machine_id: int, how: str) -> None:
        """Record ``disk_boot`` and forget the ramdisk's host key and address."""
        with self.services.db.transaction() as session:
            if not self.engine.guard.hold(session, machine_id, "disk boot"):
                return
            record = deploy.running_deployment(session, machine_id)
            if record is None:
                return
            record.host_key, record.address = "", ""
            session.add(record)
        self.engine._phase(machine_id, DISK_BOOT, how=how)


def _failure(event: dict[str, Any]) -> str:
    """The deploy's failure reason from the writer's error event."""
    message = str(event.get("message") or "the image writer failed")
    code = str(event.get("code") or "error")
    extra = ""
    if "expected" in event or "actual" in event:
        extra = f" (expected {event.get('expected')}, got {event.get('actual')})"
    return f"image write failed [{code}]: {message}{extra}"
