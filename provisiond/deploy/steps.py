"""Which step the deploy engine takes next for a machine, from the DB alone.

:func:`step_for` reads a machine's state and its running deployment's phases; the
engine (:mod:`provisiond.deploy.engine`) runs the step under the machine's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from provisiond.deploy.disk_deploy import DISK_BOOT, DISK_CONFIGURED
from provisiond.lifecycle import State
from provisiond.models import Deployment, Machine


@dataclass(frozen=True)
class Work:
    machine_id: int
    name: str
    #: power | install | heartbeat_timeout | release | repower | write_image | disk_boot
    step: str


def step_for(
    machine: Machine,
    record: Deployment,
    now: datetime,
    heartbeat_timeout: float,
    *,
    disk: bool = False,
) -> str | None:
    """The next step, or None when the machine waits on itself (a boot, a report).

    ``disk``: the deployment writes a whole-disk image (:mod:`.disk_deploy`): after the
    deploy ramdisk calls back, ``write_image``; after the write, ``disk_boot``.
    """
    phases = record.phases
    if machine.state in (State.DEPLOYING, State.INSPECTING) and "power_cycle" not in phases:
        return "power"
    if disk and machine.state == State.DEPLOYING and DISK_BOOT not in phases:
        if DISK_CONFIGURED in phases:
            return "disk_boot"
        return "write_image" if record.host_key else None
    needs_agent = machine.state == State.INSTALLING_AGENT or (
        machine.state == State.INSPECTING and record.host_key
    )
    if not needs_agent:
        return None
    installed = phases.get("agent_installed")
    if not isinstance(installed, str):
        return "install"
    if machine.state == State.INSTALLING_AGENT and "agent_heartbeat" not in phases:
        since = datetime.fromisoformat(installed)
        if now - since > timedelta(seconds=heartbeat_timeout):
            return "heartbeat_timeout"
    return None
