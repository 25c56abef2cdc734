"""A PDU's driver settings in the inventory file, and its write-only SNMP secrets.

The settings (``driver``, ``snmp_port``, ``snmp_version``, ``snmp_username``,
``snmp_auth_protocol``, ``snmp_priv_protocol``) are plain fields: planned, shown and
exported like any other. The secrets are as a BMC's password: ``snmp_community``
(SNMPv2c), ``snmp_auth_key`` and ``snmp_priv_key`` (v3), each given in clear or,
better, by reference as ``<key>_env: NAME``, a variable of the environment the file is
applied from. They are stored encrypted in the PDU's one secret (the JSON object
:mod:`provisiond.pdus.access` reads), never shown, never exported; a key left out
keeps what is stored, so an export re-applies as "unchanged".
"""

from __future__ import annotations

import json
from typing import Any

from provisiond.drivers.pdu.registry import PDU_DRIVERS
from provisiond.errors import ProvisiondError
from provisiond.secrets import SecretBox

#: The file's secret keys -> their key in the stored JSON (as provisiond.pdus.access).
SECRETS = {"snmp_community": "community", "snmp_auth_key": "auth_key", "snmp_priv_key": "priv_key"}
ENV_KEYS = tuple(f"{key}_env" for key in SECRETS)
#: Keys of a PDU entry that are not fields of its form: never merged, never exported.
WRITE_ONLY = frozenset({*SECRETS, *ENV_KEYS})
#: Bounds of a secret read from the environment, as the file's own values have.
_LENGTHS = {"snmp_community": (1, 256), "snmp_auth_key": (8, 256), "snmp_priv_key": (8, 256)}


def given_secrets(given: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """The clear secrets an entry gives (in the file or by reference): stored key -> value."""
    found = {}
    for key, stored_key in SECRETS.items():
        value = given.get(key) or env.get(given.get(f"{key}_env") or "")
        if value:
            found[stored_key] = str(value)
    return found


def problems(
    form: dict[str, Any], given: dict[str, Any], env: dict[str, str]
) -> list[tuple[str, str]]:
    """(key, message) for what the settings or the secrets' references get wrong."""
    found: list[tuple[str, str]] = []
    driver = form["driver"]
    if driver and driver not in PDU_DRIVERS:
        known = ", ".join(sorted(PDU_DRIVERS))
        found.append(
            ("driver", f"unknown PDU driver {driver!r}; use one of: {known}, or '' for none")
        )
    if driver and form["snmp_version"] == "3" and not form["snmp_username"]:
        found.append(("snmp_username", "SNMPv3 needs a user name (snmp_username)"))
    for key, (low, high) in _LENGTHS.items():
        var = given.get(f"{key}_env")
        if var is None:
            continue
        value = env.get(var)
        if not value:
            state = "is empty" if var in env else "is not set"
            found.append(
                (
                    f"{key}_env",
                    f"environment variable {var} {state} where the file was applied from",
                )
            )
        elif not low <= len(value) <= high:
            found.append(
                (f"{key}_env", f"environment variable {var} must hold {low} to {high} characters")
            )
    return found


def stored(token: str | None, box: SecretBox) -> dict[str, str]:
    """The stored secrets in clear; {} when none or undecryptable (then replaced)."""
    if not token:
        return {}
    try:
        data = json.loads(box.decrypt(token))
    except (ProvisiondError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def secret_change(
    given: dict[str, Any], token: str | None, env: dict[str, str], box: SecretBox
) -> tuple[str | None, dict[str, bool]]:
    """The clear JSON to store, or None to keep what is stored; and the file's keys that
    change, each with whether one was stored before (the plan shows neither value)."""
    new = given_secrets(given, env)
    if not new:
        return None, {}
    old = stored(token, box)
    changed = {
        key: stored_key in old
        for key, stored_key in SECRETS.items()
        if stored_key in new and old.get(stored_key) != new[stored_key]
    }
    if not changed:
        return None, {}
    return json.dumps({**old, **new}), changed
