"""Power and boot-device actions on one machine, as operators and the deploy flow use them.

Each action takes the machine's DB lock (so it never races a deploy or another
daemon), runs through the robust power service, records the outcome as an Event
and keeps ``Machine.power_state`` current.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from provisiond import locks
from provisiond.drivers.power.base import (
    BmcError,
    BmcManualAction,
    BootDevice,
    PowerAction,
    PowerDriver,
    PowerState,
)
from provisiond.errors import Conflict
from provisiond.models import Event
from provisiond.services import power
from provisiond.services.bmc_access import bmc_target
from provisiond.services.container import Services
from provisiond.services.machines import find
from provisiond.services.power import PowerPolicy
from provisiond.services.power_sync import set_power_state


@dataclass
class PowerOutcome:
    machine: str
    action: str
    state: str
    changed: bool = False
    attempts: int = 0
    seconds: float = 0.0
    manual: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _driver(services: Services, ident: str) -> tuple[int, str, PowerDriver]:
    with services.db.read_session() as session:
        machine = find(session, ident)
        if machine.bmc is None:
            raise Conflict(
                f"machine {machine.name} has no BMC",
                hint="add a bmc (driver ipmi, redfish or manual) to the machine",
            )
        target = bmc_target(session, machine.bmc, services.secrets, machine.name)
        assert machine.id is not None
        return machine.id, machine.name, services.drivers.get(machine.bmc.driver, target)


def _record(
    services: Services,
    machine_id: int,
    name: str,
    event: str,
    message: str,
    *,
    actor: str,
    request_id: str,
    state: PowerState | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    with services.db.transaction() as session:
        if state is not None:
            set_power_state(session, machine_id, state.value)
        session.add(
            Event(
                machine_id=machine_id,
                machine_name=name,
                kind="power",
                event=event,
                actor=actor,
                message=message,
                details=details or {},
                request_id=request_id,
            )
        )


def _policy(services: Services) -> PowerPolicy:
    return PowerPolicy(call_timeout=services.settings.power_call_timeout_s)


async def read_power(services: Services, ident: str) -> PowerOutcome:
    machine_id, name, driver = await asyncio.to_thread(_driver, services, ident)
    state = await power.get_power(services.executor, driver, _policy(services))
    await asyncio.to_thread(_store_state, services, machine_id, state)
    return PowerOutcome(name, "status", state.value)


def _store_state(services: Services, machine_id: int, state: PowerState) -> None:
    with services.db.transaction() as session:
        set_power_state(session, machine_id, state.value)


async def power_machine(
    services: Services, ident: str, action: PowerAction, *, actor: str, request_id: str = ""
) -> PowerOutcome:
    machine_id, name, driver = await asyncio.to_thread(_driver, services, ident)
    owner = f"{services.instance}:power:{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(
        locks.acquire, services.db, machine_id, owner, ttl_s=services.settings.lock_ttl_s
    )
    try:
        result = await power.power(services.executor, driver, action, _policy(services))
    except BmcManualAction as exc:
        await asyncio.to_thread(
            _record,
            services,
            machine_id,
            name,
            "manual_action_required",
            exc.message,
            actor=actor,
            request_id=request_id,
        )
        return PowerOutcome(
            name, action.value, PowerState.UNKNOWN.value, manual=True, message=exc.message
        )
    except BmcError as exc:
        await asyncio.to_thread(
            _record,
            services,
            machine_id,
            name,
            f"power_{action.value}_failed",
            f"{exc.message} — {exc.hint}",
            actor=actor,
            request_id=request_id,
            details={"code": exc.code},
        )
        raise
    finally:
        await asyncio.to_thread(locks.release, services.db, machine_id, owner)
    message = (
        f"power {action.value}: {result.state.value}"
        + ("" if result.changed else " (already)")
        + f" after {result.attempts} BMC call(s) in {result.seconds:.2f}s"
    )
    await asyncio.to_thread(
        _record,
        services,
        machine_id,
        name,
        f"power_{action.value}",
        message,
        actor=actor,
        request_id=request_id,
        state=result.state,
        details={
            "attempts": result.attempts,
            "seconds": round(result.seconds, 3),
            "retried_errors": result.errors,
        },
    )
    return PowerOutcome(
        name,
        action.value,
        result.state.value,
        result.changed,
        result.attempts,
        round(result.seconds, 3),
        message=message,
    )


async def set_boot_device(
    services: Services,
    ident: str,
    device: BootDevice,
    *,
    persistent: bool,
    uefi: bool,
    actor: str,
    request_id: str = "",
) -> dict[str, Any]:
    machine_id, name, driver = await asyncio.to_thread(_driver, services, ident)
    await power.set_boot_device(
        services.executor,
        driver,
        device,
        persistent=persistent,
        uefi=uefi,
        policy=_policy(services),
    )
    mode = ("persistent" if persistent else "next boot") + (", UEFI" if uefi else "")
    await asyncio.to_thread(
        _record,
        services,
        machine_id,
        name,
        "boot_device",
        f"boot device {device.value} ({mode})",
        actor=actor,
        request_id=request_id,
        details={"device": device.value, "persistent": persistent, "uefi": uefi},
    )
    return {"machine": name, "device": device.value, "persistent": persistent, "uefi": uefi}
