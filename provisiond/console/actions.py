"""What an operator can do from a machine's page: the API's own services, nothing else.

Each action has a confirmation page (``GET .../actions/NAME``) and runs on its POST,
which carries the session's form token. The result, or the error's message and hint,
is kept as the session's one-time message and shown on the machine's page (the
POST answers with a redirect, so reloading the page does not repeat the action).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from provisiond.allocations import service as allocations
from provisiond.console import auth
from provisiond.console.auth import ConsoleUser
from provisiond.container import Services
from provisiond.drivers.power.base import PowerAction
from provisiond.errors import NotFound, ProvisiondError
from provisiond.machines import power as machine_power
from provisiond.machines import service as machines
from provisiond.schemas.resources import MachineEventIn

#: The longest an action may take before the page says so (a BMC call has its own bound).
ACTION_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    warning: str
    #: Asks for a reason (kept in the event log).
    reason: bool = False


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("power-on", "Power on", "The machine is powered on through its BMC."),
        Action("power-off", "Power off", "The machine is powered off at once, without shutdown."),
        Action(
            "power-cycle",
            "Power cycle",
            "The machine is powered off and on again; whatever runs on it stops at once.",
        ),
        Action(
            "inspect",
            "Inspect",
            "The machine PXE-boots the inspection ramdisk and reports its hardware.",
        ),
        Action(
            "release",
            "Release",
            "Its allocation ends, and its disks are wiped before it is available again.",
            reason=True,
        ),
        Action(
            "maintenance-on",
            "Enter maintenance",
            "The machine is taken out of service until it is provided or inspected.",
            reason=True,
        ),
        Action(
            "maintenance-off",
            "Leave maintenance",
            "The machine is made available again.",
        ),
    )
}

_POWER = {
    "power-on": PowerAction.ON,
    "power-off": PowerAction.OFF,
    "power-cycle": PowerAction.CYCLE,
}
_EVENTS = {"inspect": "inspect", "maintenance-on": "manage", "maintenance-off": "provide"}

require_operator = auth.require_operator


def lookup(name: str) -> Action:
    action = ACTIONS.get(name)
    if action is None:
        raise NotFound(
            f"no console action named {name[:64]!r}",
            hint="one of: " + ", ".join(ACTIONS),
        )
    return action


async def run(
    services: Services,
    user: ConsoleUser,
    action: Action,
    machine: str,
    *,
    reason: str,
    request_id: str,
) -> None:
    """Run ``action`` and keep its outcome as the session's message."""
    try:
        message = await asyncio.wait_for(
            _run(services, user, action, machine, reason=reason, request_id=request_id),
            ACTION_TIMEOUT_S,
        )
        kind = "ok"
    except ProvisiondError as exc:
        message = f"{action.label} {machine} failed: {exc.message}"
        if exc.hint:
            message += f" (hint: {exc.hint})"
        kind = "error"
    except (ValueError, SQLAlchemyError) as exc:  # a reason pydantic refused; a DB error
        message = f"{action.label} {machine} failed: {_short(exc)}"
        kind = "error"
    except TimeoutError:
        message = (
            f"{action.label} {machine} did not finish within {ACTION_TIMEOUT_S:.0f} s "
            "(hint: see the machine's events for what happened)"
        )
        kind = "error"
    await asyncio.to_thread(_flash, services, user, message, kind)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(e.get("msg", "")) for e in exc.errors())[:300]
    if isinstance(exc, SQLAlchemyError):
        return "the database did not answer (hint: retry shortly)"
    return str(exc)[:300]


def _flash(services: Services, user: ConsoleUser, message: str, kind: str) -> None:
    with services.db.transaction() as session:
        auth.set_flash(session, user, message, kind)


async def _run(
    services: Services,
    user: ConsoleUser,
    action: Action,
    machine: str,
    *,
    reason: str,
    request_id: str,
) -> str:
    if action.name in _POWER:
        outcome = await machine_power.power_machine(
            services,
            machine,
            _POWER[action.name],
            actor=user.actor,
            request_id=request_id,
        )
        state = outcome.to_dict().get("power_state", "")
        return f"{action.label} {machine}: done" + (f" (power is {state})" if state else "")
    if action.name == "release":
        return await asyncio.to_thread(_release, services, user, machine, reason, request_id)
    state = await asyncio.to_thread(
        _event, services, user, machine, _EVENTS[action.name], reason, request_id
    )
    return f"{action.label} {machine}: the machine is now {state}"


def _release(
    services: Services, user: ConsoleUser, machine: str, reason: str, request_id: str
) -> str:
    """End the machine's allocation if it has one (the API's release), else release the
    machine itself (a failed deploy or wipe)."""
    with services.db.read_session() as session:
        allocation = allocations.open_allocation_of(session, machines.find(session, machine))
    if allocation is not None:
        allocations.release(
            services, user.token, allocation, actor=user.actor, request_id=request_id
        )
        return f"Release {machine}: allocation {allocation} released; the wipe has started"
    state = _event(services, user, machine, "release", reason, request_id)
    return f"Release {machine}: the machine is now {state}"


def _event(
    services: Services,
    user: ConsoleUser,
    machine: str,
    event: str,
    reason: str,
    request_id: str,
) -> str:
    with services.db.transaction() as session:
        out = machines.fire_event(
            session,
            machine,
            MachineEventIn(event=event, reason=reason),
            actor=user.actor,
            settings=services.settings,
            secrets=services.secrets,
            wake_deployer=services.wake_deployer,
            request_id=request_id,
        )
    return out.state
