"""A PDU's SNMP settings: checked, secrets encrypted on the way in, decrypted only here.

``Pdu.secret_encrypted`` holds one Fernet token of a small JSON object,
``{"community": ...}`` for SNMPv2c or ``{"auth_key": ..., "priv_key": ...}`` for
v3, so one column carries either. A patch that gives one key keeps the others.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from provisiond.drivers.pdu.base import PduTarget
from provisiond.drivers.pdu.registry import PDU_DRIVERS
from provisiond.errors import Conflict, Problem, ProvisiondError, ValidationFailed
from provisiond.models import Pdu
from provisiond.secrets import SecretBox

_SECRET_FIELDS = {
    "snmp_community": "community",
    "snmp_auth_key": "auth_key",
    "snmp_priv_key": "priv_key",
}
SETTING_FIELDS = (
    "driver",
    "snmp_port",
    "snmp_version",
    "snmp_username",
    "snmp_auth_protocol",
    "snmp_priv_protocol",
)
WRITE_ONLY = frozenset(_SECRET_FIELDS)


class PduNotConfigured(Conflict):
    code = "pdu_not_configured"


def _stored(pdu: Pdu, box: SecretBox) -> dict[str, str]:
    if not pdu.secret_encrypted:
        return {}
    try:
        data = json.loads(box.decrypt(pdu.secret_encrypted))
    except (ProvisiondError, ValueError):
        return {}  # an undecryptable secret is replaced by the next one given
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def store_secrets(pdu: Pdu, given: dict[str, Any], box: SecretBox) -> bool:
    """Merge the write-only fields in ``given`` into the stored secret; True if any."""
    new = {
        _SECRET_FIELDS[k]: v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        for k, v in given.items()
        if k in _SECRET_FIELDS and v is not None
    }
    if not new:
        return False
    pdu.secret_encrypted = box.encrypt(json.dumps({**_stored(pdu, box), **new}))
    return True


def check_settings(pdu: Pdu) -> None:
    """Reject a driver the registry does not know and v3 settings without a user."""
    problems = []
    if pdu.driver and pdu.driver not in PDU_DRIVERS:
        problems.append(
            Problem(
                "driver",
                f"unknown PDU driver {pdu.driver!r}; use one of: "
                f"{', '.join(sorted(PDU_DRIVERS))}, or '' for a PDU that is only recorded",
            )
        )
    if pdu.driver and pdu.snmp_version == "3" and not pdu.snmp_username:
        problems.append(Problem("snmp_username", "SNMPv3 needs a user name"))
    if problems:
        raise ValidationFailed(problems, hint="see GET /api/v1/pdus/{name} for the settings")


def pdu_target(pdu: Pdu, box: SecretBox, *, timeout: float, retries: int = 1) -> PduTarget:
    """The address and clear credentials of a PDU with a driver."""
    address = pdu.mgmt_address
    secret = _stored(pdu, box)
    if not pdu.driver or not address:
        raise PduNotConfigured(
            f"PDU {pdu.name} has no driver or no mgmt_address",
            hint="PATCH the PDU with driver (e.g. apc_snmp), mgmt_address and its SNMP "
            "community (snmp_community) or v3 user and keys",
        )
    v3 = pdu.snmp_version == "3"
    if (v3 and not (secret.get("auth_key") and secret.get("priv_key"))) or (
        not v3 and not secret.get("community")
    ):
        what = "snmp_auth_key and snmp_priv_key" if v3 else "snmp_community"
        raise PduNotConfigured(
            f"PDU {pdu.name} has no stored {what}",
            hint=f"PATCH the PDU with {what} (stored encrypted, never shown)",
        )
    return PduTarget(
        name=pdu.name,
        address=address,
        port=pdu.snmp_port,
        version=pdu.snmp_version,
        community=secret.get("community", ""),
        username=pdu.snmp_username,
        auth_protocol=pdu.snmp_auth_protocol or "sha",
        auth_key=secret.get("auth_key", ""),
        priv_protocol=pdu.snmp_priv_protocol or "aes128",
        priv_key=secret.get("priv_key", ""),
        timeout=timeout,
        retries=retries,
    )
