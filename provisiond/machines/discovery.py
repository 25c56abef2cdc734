"""IPMI discovery: sweep address x port, log in with credential sets, enroll or update.

1. probe: one UDP socket sends a sessionless probe to every target (ipmi_probe.sweep);
2. login: each responder is tried with the credential sets in order, concurrently,
   through the blocking executor; identity and power state are read;
3. record: in one transaction, a known machine (matched by BMC address and port,
   then serial, then BMC MAC) is updated, an unknown one is enrolled. Re-running a
   sweep creates no duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from provisiond import events, lifecycle
from provisiond.container import Services
from provisiond.drivers.power.base import BmcAuthError, BmcError, BmcTarget, Identity, PowerState
from provisiond.drivers.power.ipmi import PRIVILEGE_CODE
from provisiond.drivers.power.ipmi_probe import expand_targets, parse_ports, sweep
from provisiond.errors import BadRequest, NotFound, ProvisiondError
from provisiond.events import EventKind
from provisiond.lifecycle import Ev
from provisiond.machines import power_calls as power
from provisiond.machines.power_calls import PowerPolicy
from provisiond.models import Bmc, CredentialSet, Machine

Progress = Callable[[dict[str, Any]], None]


@dataclass
class _Cred:
    id: int
    name: str
    username: str
    password: str = field(repr=False)


@dataclass
class _Found:
    address: str
    port: int
    cred: _Cred
    identity: Identity
    power: PowerState


@dataclass
class DiscoveryResult:
    targets: int = 0
    responders: int = 0
    enrolled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: One per BMC that answered but was not read: bmc, code, reason, hint, and the
    #: attempts (credential_set, code, message, hint) behind them.
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _credentials(services: Services, names: list[str] | None) -> list[_Cred]:
    with services.db.read_session() as session:
        rows = list(session.exec(select(CredentialSet).order_by(col(CredentialSet.name))))
    by_name = {r.name: r for r in rows}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise NotFound(
                f"no credential set named {', '.join(map(repr, missing))}",
                hint="list them with 'provisiond credentials list'",
            )
        rows = [by_name[n] for n in names]
    if not rows:
        raise BadRequest(
            "discovery needs at least one credential set to log in with",
            hint="add one: provisiond credentials add NAME --username U --password-stdin",
        )
    return [
        _Cred(r.id or 0, r.name, r.username, services.secrets.decrypt(r.secret_encrypted))
        for r in rows
    ]


async def _login(
    services: Services,
    address: str,
    port: int,
    creds: list[_Cred],
    policy: PowerPolicy,
    known: int | None = None,
) -> _Found | dict[str, Any]:
    """Try each credential set, the one the BMC already uses first; the first to log in wins.

    A refusal is kept per credential set, with the driver's code, message and hint, so
    a BMC that refuses a user the privilege is reported as that, not as a bad password.
    """
    attempts: list[dict[str, str]] = []
    for cred in sorted(creds, key=lambda c: c.id != known):
        target = BmcTarget(
            address,
            port,
            cred.username,
            cred.password,
            credential_source=f"credential set '{cred.name}'",
        )
        driver = services.drivers.get("ipmi", target)
        try:
            state = await power.get_power(services.executor, driver, policy)
            identity = await services.executor.run(
                driver.read_identity,
                timeout=policy.call_timeout * 3,
                key=f"bmc:{target.endpoint}",
                what="read identity",
            )
            return _Found(address, port, cred, identity, state)
        except BmcAuthError as exc:
            attempts.append(_attempt(cred, exc))
            continue  # another credential set may log in
        except ProvisiondError as exc:  # the BMC itself fails (or times out): stop here
            attempts.append(_attempt(cred, exc))
            break
        except Exception as exc:  # an odd BMC that confused the client library
            attempts.append(_attempt(cred, BmcError(str(exc), hint="see the daemon's log")))
            break
    return _failure(f"{address}:{port}", attempts)


def _attempt(cred: _Cred, exc: ProvisiondError) -> dict[str, str]:
    return {
        "credential_set": cred.name,
        "code": exc.code,
        "message": exc.message,
        "hint": exc.hint,
    }


def _failure(bmc: str, attempts: list[dict[str, str]]) -> dict[str, Any]:
    """One responder's failure: the most telling refusal first, every attempt kept."""
    refused = [a for a in attempts if a["code"] == PRIVILEGE_CODE]
    if refused:  # the password worked, or did not matter: the user's role is the problem
        first = refused[0]
        reason = f"credential set '{first['credential_set']}': {first['message']}"
        code, hint = PRIVILEGE_CODE, first["hint"]
    elif all(a["code"] == BmcAuthError.code for a in attempts):
        names = ", ".join(a["credential_set"] for a in attempts)
        reason = f"no credential set logged in (tried {names})"
        code, hint = (
            BmcAuthError.code,
            "add the BMC's credentials as a credential set and sweep again",
        )
    else:
        last = attempts[-1]
        reason, code, hint = last["message"], last["code"], last["hint"]
    return {"bmc": bmc, "code": code, "reason": reason, "hint": hint, "attempts": attempts}


def _known_credentials(services: Services) -> dict[tuple[str, int], int]:
    """The credential set each known BMC logs in with, to try it first on a re-sweep."""
    with services.db.read_session() as session:
        rows = session.exec(
            select(Bmc.address, Bmc.port, Bmc.credential_set_id).where(
                col(Bmc.credential_set_id).is_not(None)
            )
        ).all()
    return {(address, port): cred for address, port, cred in rows if cred is not None}


def machine_name(address: str, port: int) -> str:
    return f"bmc-{address.replace('.', '-')}-{port}"


def _match(session: Session, found: _Found) -> Machine | None:
    bmc = session.exec(
        select(Bmc).where(Bmc.address == found.address, Bmc.port == found.port)
    ).first()
    if bmc is None and found.identity.serial:
        by_serial = session.exec(
            select(Machine).where(Machine.serial == found.identity.serial)
        ).first()
        if by_serial is not None:
            return by_serial
    if bmc is None and found.identity.bmc_mac:
        bmc = session.exec(select(Bmc).where(Bmc.mac == found.identity.bmc_mac)).first()
    return session.get(Machine, bmc.machine_id) if bmc is not None else None


def _record(services: Services, found: list[_Found], actor: str, result: DiscoveryResult) -> None:
    with services.db.transaction() as session:
        for item in found:
            identity = item.identity
            machine = _match(session, item)
            wanted = {
                "serial": identity.serial,
                "vendor": identity.vendor,
                "model": identity.model,
            }
            if machine is None:
                machine = Machine(
                    name=machine_name(item.address, item.port),
                    power_state=item.power.value,
                    serial=identity.serial,
                    vendor=identity.vendor,
                    model=identity.model,
                )
                lifecycle.advance(
                    session,
                    machine,
                    Ev.ENROLL,
                    actor=actor,
                    timeouts=services.settings.timeouts,
                    reason=f"discovered via IPMI at {item.address}:{item.port}",
                    details={"bmc": f"{item.address}:{item.port}", "credentials": item.cred.name},
                )
                assert machine.id is not None
                session.add(_bmc(Bmc(machine_id=machine.id), item))
                result.enrolled.append(machine.name)
                continue
            changes = {k: v for k, v in wanted.items() if v and getattr(machine, k) != v}
            bmc = machine.bmc or Bmc(machine_id=machine.id or 0)
            before = (bmc.address, bmc.port, bmc.mac, bmc.credential_set_id)
            _bmc(bmc, item)
            if (bmc.address, bmc.port, bmc.mac, bmc.credential_set_id) != before:
                changes["bmc"] = f"{item.address}:{item.port}"
            session.add(bmc)
            if not changes:
                result.unchanged.append(machine.name)
                continue
            for key, value in changes.items():
                if key != "bmc":
                    setattr(machine, key, value)
            session.add(machine)
            events.record(
                session,
                EventKind.DISCOVERY,
                "updated",
                flush=False,
                machine=machine,
                actor=actor,
                message="discovery updated " + ", ".join(sorted(changes)),
                details={k: str(v) for k, v in changes.items()},
            )
            result.updated.append(machine.name)


def _summary_event(services: Services, result: DiscoveryResult, actor: str) -> None:
    """One event per sweep, so operators see sweeps (and their failures) in the event log."""
    with services.db.transaction() as session:
        events.record(
            session,
            EventKind.DISCOVERY,
            "sweep",
            actor=actor,
            message=(
                f"swept {result.targets} targets: {result.responders} answered, "
                f"{len(result.enrolled)} enrolled, {len(result.updated)} updated, "
                f"{len(result.unchanged)} unchanged, {len(result.failed)} failed"
            ),
            details={"failed": result.failed[:100], "seconds": result.seconds},
        )


def _bmc(bmc: Bmc, item: _Found) -> Bmc:
    bmc.driver = "ipmi"
    bmc.address = item.address
    bmc.port = item.port
    bmc.mac = item.identity.bmc_mac or bmc.mac
    if not bmc.secret_encrypted:  # a machine's own password wins over the credential set
        bmc.credential_set_id = item.cred.id
        bmc.username = ""
    return bmc


@dataclass
class Sweep:
    """A validated sweep: what to probe and which credential sets to try."""

    targets: list[tuple[str, int]]
    creds: list[_Cred]


def prepare(
    services: Services, networks: list[str], ports: str, credentials: list[str] | None = None
) -> Sweep:
    """Check the request before any packet is sent; bad input raises a 4xx error with a hint."""
    targets = expand_targets(networks, parse_ports(ports), services.settings.discovery_max_targets)
    return Sweep(targets, _credentials(services, credentials))


async def discover(
    services: Services,
    plan: Sweep,
    *,
    actor: str = "discovery",
    progress: Progress | None = None,
) -> DiscoveryResult:
    settings = services.settings
    emit = progress or (lambda _event: None)
    targets, creds = plan.targets, plan.creds
    result = DiscoveryResult(targets=len(targets))

    started = time.monotonic()
    emit({"phase": "probe", "targets": len(targets)})
    responders = await sweep(targets, timeout=settings.discovery_probe_timeout_s)
    result.responders = len(responders)
    result.seconds["probe"] = round(time.monotonic() - started, 3)
    emit({"phase": "probed", "responders": len(responders), "seconds": result.seconds["probe"]})

    started = time.monotonic()
    policy = PowerPolicy(call_timeout=settings.power_call_timeout_s, backoff=(0.5, 1))
    limit = asyncio.Semaphore(settings.power_sync_concurrency)
    found: list[_Found] = []
    done = 0

    known = await asyncio.to_thread(_known_credentials, services)

    async def one(address: str, port: int) -> None:
        nonlocal done
        async with limit:
            outcome = await _login(
                services, address, port, creds, policy, known.get((address, port))
            )
        if isinstance(outcome, _Found):
            found.append(outcome)
        else:
            result.failed.append(outcome)
        done += 1
        if done % 50 == 0 or done == len(responders):
            emit({"phase": "login", "done": done, "total": len(responders)})

    await asyncio.gather(*(one(a, p) for a, p in sorted(responders)))
    result.seconds["login"] = round(time.monotonic() - started, 3)

    started = time.monotonic()
    found.sort(key=lambda f: (f.address, f.port))
    await asyncio.to_thread(_record, services, found, actor, result)
    result.seconds["record"] = round(time.monotonic() - started, 3)
    result.failed.sort(key=lambda f: f["bmc"])
    await asyncio.to_thread(_summary_event, services, result, actor)
    emit({"phase": "done"})
    return result
