"""The hook :mod:`provisiond.machines.power` calls first: power through a machine's outlets.

A machine with no BMC (or a ``manual`` one) that is fed by a PDU with a driver is
powered through its outlet(s); any other machine returns None here and goes to its
BMC as before. The answer has the fields of ``machines.power.PowerOutcome``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from provisiond.container import Services
from provisiond.drivers.pdu.base import OutletAction
from provisiond.errors import Conflict
from provisiond.pdus.outlets import machine_path, machine_power

_ACTIONS = {
    "on": OutletAction.ON,
    "off": OutletAction.OFF,
    "cycle": OutletAction.CYCLE,
    "reset": OutletAction.CYCLE,
}


async def power_via_outlet(
    services: Services,
    ident: str,
    action: str,
    *,
    actor: str,
    request_id: str = "",
    hard: bool = False,
) -> dict[str, Any] | None:
    """Do ``action`` through the machine's outlets, or None when it has a BMC to use."""
    outlet_action = _ACTIONS.get(action)
    if outlet_action is None:  # soft_off: refused only when the outlet is the path
        if await asyncio.to_thread(machine_path, services, ident, hard) is None:
            return None
        raise Conflict(
            f"power {action} cannot be done through an outlet: it cuts power at once",
            hint="use 'off' (a hard off through the outlet) or give the machine a BMC",
        )
    results = await machine_power(
        services, ident, outlet_action, actor=actor, request_id=request_id, hard=hard
    )
    if results is None:
        return None
    where = ", ".join(f"{r.pdu}/{n}" for r in results for n in r.outlets)
    changed = any(r.changed for r in results)
    state = results[-1].state
    return {
        "machine": results[0].machine or ident,
        "action": action,
        "state": state,
        "changed": changed,
        "attempts": len(results),
        "seconds": round(sum(r.seconds for r in results), 3),
        "message": f"power {action} through outlet {where}: {state}"
        + ("" if changed else " (already)"),
        "source": "pdu",
    }
