"""Release: wipe the disks over SSH, power off, and make the machine available.

One step of the :class:`~provisiond.deploy.engine.DeployEngine`, which
takes the machine's lock and calls :meth:`Releaser.step` for a machine in
``releasing``. The wipe needs the OS this daemon deployed (its per-deploy key and
the host key the OS reported); without one it is skipped, and a ``wipe_skipped``
event says so, written in the same transaction as the outcome (``available``, or
``release_failed`` with the reason). ``disks_wiped`` is recorded as soon as the
wipe is verified. Nothing is written when the machine left ``releasing`` meanwhile
(an operator moved it on), or when the engine's lock on it passed to another owner
(:mod:`provisiond.deploy.lock_guard`): the release is then not ours to finish.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from provisiond import events
from provisiond.deploy.remote_ops import wipe_disks
from provisiond.deploy.ssh import SshError
from provisiond.drivers.power.base import BmcError, BmcManualAction, PowerAction
from provisiond.errors import Conflict, ProvisiondError
from provisiond.events import EventKind
from provisiond.lifecycle import Ev, State, advance
from provisiond.machines import power as machine_power
from provisiond.machines import power_calls as power
from provisiond.models import Deployment, Machine

if TYPE_CHECKING:
    from provisiond.deploy.engine import DeployEngine
    from provisiond.deploy.steps import Work

ACTOR = "engine"

#: Recorded with the release's outcome.
WIPE_SKIPPED = (
    "wipe_skipped",
    "no OS with this daemon's key is running (never deployed, or the deploy failed "
    "before the OS called back); disks were wiped by the previous release",
)


def add_event(session: Session, machine_id: int, name: str, event: str, message: str) -> None:
    events.record(
        session,
        EventKind.DEPLOY,
        event,
        flush=False,
        machine_id=machine_id,
        machine_name=name,
        actor=ACTOR,
        message=message,
    )


def _still_releasing(session: Session, item: Work, notes: list[tuple[str, str]]) -> Machine | None:
    """The machine if it is still ``releasing`` (its notes then recorded), else None."""
    machine = session.get(Machine, item.machine_id)
    if machine is None or machine.state != State.RELEASING:
        return None
    for event, message in notes:
        add_event(session, item.machine_id, item.name, event, message)
    return machine


class Releaser:
    def __init__(self, engine: DeployEngine) -> None:
        self.engine = engine
        self.services = engine.services
        self.settings = engine.settings

    def plan(self, machine_id: int) -> tuple[str, str, str] | None:
        with self.services.db.read_session() as session:
            machine = session.get(Machine, machine_id)
            if machine is None or not machine.ssh_host_key:
                return None
            record = session.exec(
                select(Deployment)
                .where(Deployment.machine_id == machine_id, Deployment.address != "")
                .order_by(col(Deployment.id).desc())
            ).first()
            if record is None or record.host_key != machine.ssh_host_key:
                return None
            private = self.services.secrets.decrypt(record.ssh_private_key_encrypted)
            return record.address, record.host_key, private

    async def step(self, item: Work) -> None:
        plan = await asyncio.to_thread(self.plan, item.machine_id)
        wiped: list[str] = []
        notes: list[tuple[str, str]] = []
        if plan is None:
            notes.append(WIPE_SKIPPED)
        else:
            address, host_key, private = plan
            if not self.engine.guard.alive():  # no recent heartbeat: not ours to wipe now
                return
            try:
                wiped = await self.services.executor.run(
                    wipe_disks,
                    address,
                    host_key,
                    private,
                    attempts=3,
                    netns=self.engine.netns_for(address),
                    timeout=self.settings.timeouts.releasing,
                    key=f"ssh:{address}",
                    what=f"disk wipe on {item.name}",
                )
            except (SshError, ProvisiondError) as exc:
                await asyncio.to_thread(self.failed, item, exc.message, notes)
                return
            await asyncio.to_thread(
                self.engine.record_event,
                item.machine_id,
                item.name,
                "disks_wiped",
                f"wiped and verified the first and last MiB of {', '.join(wiped) or 'no disk'}",
            )
        try:
            _, _, driver = await asyncio.to_thread(machine_power._driver, self.services, item.name)
            await power.power(
                self.services.executor, driver, PowerAction.OFF, self.engine.power_policy()
            )
        except BmcManualAction:
            pass  # nothing to power off remotely; the machine is idle (poweroff -f)
        except Conflict:
            pass  # no BMC
        except (BmcError, ProvisiondError) as exc:
            await asyncio.to_thread(self.failed, item, f"power off failed: {exc.message}", notes)
            return
        await asyncio.to_thread(self.released, item, wiped, notes)

    def failed(self, item: Work, reason: str, notes: list[tuple[str, str]]) -> None:
        with self.services.db.transaction() as session:
            if not self.engine.guard.hold(session, item.machine_id, f"release failed: {reason}"):
                return
            machine = _still_releasing(session, item, notes)
            if machine is None:
                return
            advance(
                session,
                machine,
                Ev.FAIL,
                actor=ACTOR,
                timeouts=self.settings.timeouts,
                reason=f"release failed: {reason}",
            )

    def released(self, item: Work, wiped: list[str], notes: list[tuple[str, str]]) -> None:
        with self.services.db.transaction() as session:
            if not self.engine.guard.hold(session, item.machine_id, "released"):
                return
            machine = _still_releasing(session, item, notes)
            if machine is None:
                return
            machine.ssh_host_key = ""
            machine.agent_token_hash = None
            session.add(machine)
            advance(
                session,
                machine,
                Ev.DONE,
                actor=ACTOR,
                timeouts=self.settings.timeouts,
                reason="released: disks wiped, powered off" if wiped else "released",
                details={"wiped": wiped},
            )
