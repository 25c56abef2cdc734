"""A boot lost across a daemon restart: when to power-cycle it again.

The engine power-cycles a machine; its OS boots and calls back. If the daemon was
down when the callback came, the guest retries for about a minute and gives up, and
nothing moves the machine on before its deadline (``timeouts.deploying``, 15 min).
So a boot power-cycled before this daemon started is started again, as a new
attempt from the power-cycle (up to ``deploy_max_attempts``), when nothing has been
heard from it ``lost_boot_s`` after the start.

Being heard from ends that wait early, in the boot's favour:

- a boot phase first recorded after the start (DHCP, TFTP, the iPXE script, a
  kernel fetch, the seed...): the boot is moving;
- the boot firmware asking dnsmasq again for a phase it had reached (``asked_again``,
  see :mod:`provisiond.deploy.telemetry`): the machine is booting again.

Phases recorded before the restart say nothing either way: the callback may have
fallen into the downtime after them. A boot that was heard from but never calls back
meets its deadline, as any other boot.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from provisiond.deploy.records import ASKED_AGAIN
from provisiond.deploy.telemetry import ORIGIN_PHASES
from provisiond.lifecycle import State
from provisiond.models import Deployment, Machine


def _stamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def heard_since(record: Deployment, since: datetime) -> str | None:
    """The boot phase the machine reached, or asked for again, at or after ``since``."""
    again = record.phases.get(ASKED_AGAIN)
    if isinstance(again, dict):
        at = _stamp(again.get("at"))
        if at is not None and at >= since:
            return str(again.get("phase"))
    for phase, value in record.phases.items():
        at = _stamp(value)
        if phase not in ORIGIN_PHASES and at is not None and at >= since:
            return phase
    return None


def is_lost(
    machine: Machine, record: Deployment, *, now: datetime, started: datetime, wait_s: float
) -> bool:
    """True when the boot was power-cycled before ``started`` and is given up for lost."""
    if machine.state not in (State.DEPLOYING, State.INSPECTING) or record.host_key:
        return False
    cycled = _stamp(record.phases.get("power_cycle"))
    if cycled is None or record.phases.get("power_cycle_skipped") or cycled >= started:
        return False
    if now - started <= timedelta(seconds=wait_s):
        return False
    return heard_since(record, started) is None
