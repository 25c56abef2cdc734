"""Secrets at rest: credential sets for discovery, and the BMC passwords of machines.

Passwords arrive as ``SecretStr``, are encrypted with the daemon's SecretBox at
once, and leave only as ``password_set``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from provisiond.crud import ensure_name_free, get_by_name
from provisiond.drivers.power.redfish_tls import PIN_HINT, canonical_fingerprint
from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.events import audit
from provisiond.models import Bmc, CredentialSet, Machine
from provisiond.schemas.catalog import CredentialIn, CredentialOut, CredentialPatch
from provisiond.schemas.resources import BmcIn, BmcPatch
from provisiond.secrets import SecretBox


def _out(row: CredentialSet) -> CredentialOut:
    return CredentialOut(
        name=row.name,
        username=row.username,
        password_set=bool(row.secret_encrypted),
        created_at=row.created_at,
    )


def list_credentials(session: Session) -> list[CredentialOut]:
    return [_out(row) for row in session.exec(select(CredentialSet).order_by(CredentialSet.name))]


def get_credential(session: Session, name: str) -> CredentialOut:
    return _out(get_by_name(session, CredentialSet, name, kind="credential set"))


def create_credential(
    session: Session, box: SecretBox, spec: CredentialIn, *, actor: str, request_id: str = ""
) -> CredentialOut:
    ensure_name_free(session, CredentialSet, spec.name, kind="credential set")
    row = CredentialSet(
        name=spec.name,
        username=spec.username,
        secret_encrypted=box.encrypt(spec.password.get_secret_value()),
    )
    session.add(row)
    session.flush()
    audit(
        session,
        "credential_create",
        f"created credential set {row.name}",
        actor=actor,
        request_id=request_id,
    )
    return _out(row)


def update_credential(
    session: Session,
    box: SecretBox,
    name: str,
    patch: CredentialPatch,
    *,
    actor: str,
    request_id: str = "",
) -> CredentialOut:
    row = get_by_name(session, CredentialSet, name, kind="credential set")
    if patch.username is not None:
        row.username = patch.username
    if patch.password is not None:
        row.secret_encrypted = box.encrypt(patch.password.get_secret_value())
    session.add(row)
    session.flush()
    fields = sorted(patch.model_fields_set)
    audit(
        session,
        "credential_update",
        f"changed credential set {name}: {', '.join(fields)}",
        actor=actor,
        request_id=request_id,
        details={"fields": fields},
    )
    return _out(row)


def delete_credential(session: Session, name: str, *, actor: str, request_id: str = "") -> None:
    row = get_by_name(session, CredentialSet, name, kind="credential set")
    users = list(
        session.exec(
            select(Machine.name)
            .join(Bmc, col(Bmc.machine_id) == col(Machine.id))
            .where(Bmc.credential_set_id == row.id)
            .order_by(Machine.name)
        )
    )
    if users:
        raise Conflict(
            f"credential set {name} is used by the BMC of {len(users)} machine(s): "
            + ", ".join(users[:5]),
            hint="PATCH those machines' bmc (credential_set: null, or another set) first",
        )
    audit(
        session,
        "credential_delete",
        f"deleted credential set {name}",
        actor=actor,
        request_id=request_id,
    )
    session.delete(row)
    session.flush()


# --- BMC secrets ---------------------------------------------------------------


def _credential_id(session: Session, name: str | None) -> int | None:
    if name is None:
        return None
    row = session.exec(select(CredentialSet.id).where(CredentialSet.name == name)).first()
    if row is None:
        raise ValidationFailed(
            [Problem("bmc.credential_set", f"no credential set named {name!r}")],
            hint="create it first (POST /api/v1/credentials), or list them",
        )
    return row


def _check_bmc(session: Session, bmc: Bmc, machine: Machine | None) -> None:
    if bmc.driver != "manual" and not bmc.address:
        raise ValidationFailed(
            [Problem("bmc.address", f"a {bmc.driver} BMC needs an address")],
            hint='give the BMC host name or IP, or use driver "manual"',
        )
    if not bmc.address:
        return
    other = session.exec(
        select(Machine.name)
        .join(Bmc, col(Bmc.machine_id) == col(Machine.id))
        .where(Bmc.address == bmc.address, Bmc.port == bmc.port)
        .where(Machine.id != (machine.id if machine else None))
    ).first()
    if other is not None:
        raise Conflict(
            f"BMC {bmc.address}:{bmc.port} already belongs to machine {other}",
            hint="one BMC controls one machine; check the address or fix the other machine",
        )


def _default_port(driver: str) -> int:
    return 443 if driver == "redfish" else 623


def _pin(value: str) -> str:
    """A certificate pin in its stored form, or a 422 that says how to get a right one."""
    try:
        return canonical_fingerprint(value)
    except ValueError as exc:
        raise ValidationFailed(
            [Problem("bmc.cert_fingerprint", str(exc))],
            hint=PIN_HINT + "; or leave cert_fingerprint out and pin it that way later",
        ) from None


def build_bmc(session: Session, box: SecretBox, spec: BmcIn, *, machine: Machine | None) -> Bmc:
    clear = spec.password.get_secret_value() if spec.password else ""
    fields: dict[str, Any] = {
        "driver": spec.driver,
        "address": spec.address,
        "port": spec.port or _default_port(spec.driver),
        "username": spec.username,
        "secret_encrypted": box.encrypt(clear) if clear else None,
        "credential_set_id": _credential_id(session, spec.credential_set),
        "cert_fingerprint": _pin(spec.cert_fingerprint),
        "tls_verify": spec.tls_verify,
    }
    bmc = Bmc(**fields)
    _check_bmc(session, bmc, machine)
    return bmc


def patch_bmc(session: Session, box: SecretBox, machine: Machine, patch: BmcPatch | None) -> None:
    if patch is None:
        machine.bmc = None
        return
    if machine.bmc is None:
        machine.bmc = build_bmc(
            session, box, BmcIn(**patch.model_dump(exclude_unset=True)), machine=machine
        )
        return
    bmc, given = machine.bmc, patch.model_fields_set
    if "port" not in given and patch.driver and bmc.port == _default_port(bmc.driver):
        bmc.port = _default_port(patch.driver)
    for key in ("driver", "address", "port", "username", "tls_verify"):
        if key in given:
            setattr(bmc, key, getattr(patch, key))
    if patch.cert_fingerprint is not None:
        bmc.cert_fingerprint = _pin(patch.cert_fingerprint)
    if "credential_set" in given:
        bmc.credential_set_id = _credential_id(session, patch.credential_set)
    if patch.password is not None:
        clear = patch.password.get_secret_value()
        bmc.secret_encrypted = box.encrypt(clear) if clear else None
    _check_bmc(session, bmc, machine)
