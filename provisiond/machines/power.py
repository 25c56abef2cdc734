"""Power and boot-device actions on one machine, as operators and the deploy flow use them.

Each action takes the machine's DB lock (so it never races a deploy or another
daemon), runs through the robust power service, records the outcome as an Event
and keeps ``Machine.power_state`` current. A read that must not reach the BMC
(``live=False``, for ``ci`` tokens) answers that recorded state.

Also here: the TLS certificate a Redfish BMC presents, read for an operator to
confirm, and pinned only when the operator names the fingerprint they confirmed.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from provisiond import events, locks, power_admission
from provisiond.container import Services
from provisiond.drivers.power.base import (
    BmcError,
    BmcManualAction,
    BootDevice,
    PowerAction,
    PowerDriver,
    PowerState,
)
from provisiond.drivers.power.redfish_tls import (
    PIN_HINT,
    PresentedCertificate,
    canonical_fingerprint,
    fetch_certificate,
)
from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.events import EventKind, audit
from provisiond.machines import power_calls as power
from provisiond.machines.bmc_access import bmc_target
from provisiond.machines.power_calls import PowerPolicy
from provisiond.machines.power_sync import set_power_state
from provisiond.machines.service import find
from provisiond.pdus.power_path import power_via_outlet


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
    #: "bmc": read from the BMC just now; "cached": the state the daemon last recorded.
    source: str = "bmc"

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
        events.record(
            session,
            EventKind.POWER,
            event,
            machine_id=machine_id,
            machine_name=name,
            actor=actor,
            message=message,
            details=details,
            request_id=request_id,
        )


def _policy(services: Services) -> PowerPolicy:
    return PowerPolicy(call_timeout=services.settings.power_call_timeout_s)


async def read_power(services: Services, ident: str, *, live: bool) -> PowerOutcome:
    """The power state from the BMC (``live``), or as last recorded, with no BMC traffic."""
    if not live:
        return await asyncio.to_thread(_cached_power, services, ident)
    machine_id, name, driver = await asyncio.to_thread(_driver, services, ident)
    state = await power.get_power(services.executor, driver, _policy(services))
    await asyncio.to_thread(_store_state, services, machine_id, state)
    return PowerOutcome(name, "status", state.value)


def _cached_power(services: Services, ident: str) -> PowerOutcome:
    with services.db.read_session() as session:
        machine = find(session, ident)
        reason = machine.bmc.unreachable_reason if machine.bmc else ""
        note = f"the BMC is marked unreachable: {reason}" if reason else ""
        return PowerOutcome(
            machine.name, "status", machine.power_state, message=note, source="cached"
        )


def _store_state(services: Services, machine_id: int, state: PowerState) -> None:
    with services.db.transaction() as session:
        set_power_state(session, machine_id, state.value)


async def admit_power_on(
    services: Services,
    ident: str,
    action: PowerAction,
    *,
    actor: str,
    request_id: str = "",
    force: bool = False,
    state: PowerState | None = None,
) -> str:
    """The rack power budget's word on ``action`` (:mod:`provisiond.power_admission`): raises
    OverBudget (409) unless admitted or forced; "" or a note. Powering off always passes,
    and so does anything on a machine the caller has just read (``state``) as on."""
    if action in (PowerAction.OFF, PowerAction.SOFT_OFF) or state is PowerState.ON:
        return ""
    read_state = state.value if state is not None else ""
    admit = functools.partial(
        power_admission.admit_power_on, force=force, actor=actor, read_state=read_state
    )
    return await asyncio.to_thread(admit, services, ident, request_id=request_id)


async def power_machine(
    services: Services,
    ident: str,
    action: PowerAction,
    *,
    actor: str,
    request_id: str = "",
    force: bool = False,
) -> PowerOutcome:
    note = await admit_power_on(
        services, ident, action, actor=actor, request_id=request_id, force=force
    )
    # No BMC (or a manual one) but an outlet on a PDU with a driver: power goes there.
    via = await power_via_outlet(services, ident, action.value, actor=actor, request_id=request_id)
    if via is not None:
        return PowerOutcome(**via)
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
        + (f"; {note}" if note else "")
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


# --- a Redfish BMC's TLS certificate -------------------------------------------


@dataclass(frozen=True)
class _TlsEndpoint:
    name: str
    address: str
    port: int
    pinned: str
    tls_verify: str


def _tls_endpoint(services: Services, ident: str) -> _TlsEndpoint:
    with services.db.read_session() as session:
        machine = find(session, ident)
        bmc = machine.bmc
        if bmc is None or bmc.driver != "redfish" or not bmc.address:
            what = "no BMC" if bmc is None else f"a {bmc.driver} BMC"
            if bmc is not None and bmc.driver == "redfish":
                what = "a redfish BMC without an address"
            raise Conflict(
                f"machine {machine.name} has {what}, so there is no TLS certificate to read",
                hint="only a redfish BMC (HTTPS) presents a certificate; set the machine's "
                "bmc driver, address and port first",
            )
        return _TlsEndpoint(
            machine.name, bmc.address, bmc.port, bmc.cert_fingerprint, bmc.tls_verify
        )


async def _presented(services: Services, bmc: _TlsEndpoint) -> PresentedCertificate:
    timeout = services.settings.power_call_timeout_s
    # The socket's own deadline sits inside the executor's, so its clearer error wins.
    read = functools.partial(fetch_certificate, bmc.address, bmc.port, timeout=timeout)
    return await services.executor.run(
        read,
        timeout=timeout + 2,
        key=f"bmc:{bmc.address}:{bmc.port}",
        what=f"read the TLS certificate of BMC {bmc.address}:{bmc.port}",
    )


def _certificate_view(bmc: _TlsEndpoint, cert: PresentedCertificate) -> dict[str, Any]:
    return {
        "machine": bmc.name,
        "bmc": f"{bmc.address}:{bmc.port}",
        **cert.to_dict(),
        "pinned": bmc.pinned,
        "matches_pin": bmc.pinned == cert.fingerprint,
        "tls_verify": bmc.tls_verify,
    }


async def bmc_certificate(services: Services, ident: str) -> dict[str, Any]:
    """The certificate machine ``ident``'s Redfish BMC presents now; changes nothing."""
    bmc = await asyncio.to_thread(_tls_endpoint, services, ident)
    return _certificate_view(bmc, await _presented(services, bmc))


def _pin(value: str) -> str:
    try:
        pin = canonical_fingerprint(value)
    except ValueError as exc:
        raise ValidationFailed([Problem("fingerprint", str(exc))], hint=PIN_HINT) from None
    if not pin:
        raise ValidationFailed(
            [Problem("fingerprint", "name the fingerprint you confirmed")], hint=PIN_HINT
        )
    return pin


async def pin_bmc_certificate(
    services: Services, ident: str, fingerprint: str, *, actor: str, request_id: str = ""
) -> dict[str, Any]:
    """Pin ``fingerprint``, which the operator confirmed, if the BMC still presents it."""
    wanted = _pin(fingerprint)
    bmc = await asyncio.to_thread(_tls_endpoint, services, ident)
    cert = await _presented(services, bmc)
    if cert.fingerprint != wanted:
        raise Conflict(
            f"BMC {bmc.address}:{bmc.port} of machine {bmc.name} now presents certificate "
            f"{cert.fingerprint}, not the {wanted} you confirmed; nothing was pinned",
            hint="the certificate changed since you looked, or the connection is intercepted; "
            + PIN_HINT,
            code="bmc_certificate_changed",
        )
    stored = await asyncio.to_thread(
        _store_pin, services, bmc, wanted, actor=actor, request_id=request_id
    )
    return _certificate_view(stored, cert)


def _store_pin(
    services: Services, seen: _TlsEndpoint, pin: str, *, actor: str, request_id: str
) -> _TlsEndpoint:
    with services.db.transaction() as session:
        machine = find(session, seen.name)
        bmc = machine.bmc
        now = (bmc.driver, bmc.address, bmc.port) if bmc is not None else None
        if bmc is None or now != ("redfish", seen.address, seen.port):
            raise Conflict(
                f"the BMC of machine {seen.name} changed while its certificate was read",
                hint="read the certificate again and confirm it",
            )
        before = bmc.cert_fingerprint
        bmc.cert_fingerprint, bmc.tls_verify = pin, "fingerprint"
        session.add(bmc)
        audit(
            session,
            "bmc_certificate_pinned",
            f"pinned the TLS certificate of BMC {seen.address}:{seen.port}: {pin}",
            actor=actor,
            request_id=request_id,
            machine=machine,
            details={"from": before, "to": pin},
        )
        return _TlsEndpoint(machine.name, bmc.address, bmc.port, pin, bmc.tls_verify)
