"""LLDP neighbours as the agent reports them, checked and put in one shape.

The agent sends one dict per NIC on which it heard a neighbour::

    {"interface": "eth0", "mac": "52:54:00:aa:bb:01",
     "chassis_id": "44:38:39:00:00:01", "chassis_id_subtype": "mac",
     "system_name": "lab1-sw1", "system_description": "Cumulus Linux 5.4",
     "port_id": "swp1", "port_id_subtype": "interface_name",
     "port_description": "vm1 eth0", "mgmt_addresses": ["10.0.0.2"],
     "vlans": [{"id": 10, "name": "prov"}], "pvid": 10, "ttl": 120}

Agents older than that send ``lldpcli``'s summary, ``{"interface", "chassis",
"chassis_id", "port", "port_description"}``; :func:`normalise` turns both into the
first shape (a legacy ``chassis`` is the system name; an id that reads as a MAC gets
the ``mac`` subtype). The report is untrusted: an entry with a wrong type, an unknown
subtype or a string longer than LLDP allows (255 octets a TLV) is refused with the
reason, never stored and never a 500.
"""

from __future__ import annotations

import re
from typing import Any

from provisiond.validators import normalize_mac

CHASSIS_SUBTYPES = frozenset(
    {"chassis_component", "interface_alias", "port_component", "mac", "network_address"}
    | {"interface_name", "local"}
)
PORT_SUBTYPES = frozenset(
    {"interface_alias", "port_component", "mac", "network_address", "interface_name"}
    | {"agent_circuit_id", "local"}
)
#: Longest string an LLDP TLV carries (the TLV length field is 9 bits; ids are <= 255).
MAX_TEXT = 255
MAX_ADDRESSES = 16
MAX_VLANS = 256
#: The keys of a stored neighbour (Nic.lldp), in this order.
KEYS = (
    *("interface", "mac", "chassis_id", "chassis_id_subtype", "system_name"),
    *("system_description", "port_id", "port_id_subtype", "port_description"),
    *("mgmt_addresses", "vlans", "pvid", "ttl"),
)
_TEXT = (
    *("interface", "chassis_id", "chassis_id_subtype", "system_name", "system_description"),
    *("port_id", "port_id_subtype", "port_description"),
)
_MACLIKE = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


class Refused(ValueError):
    """Why an LLDP entry was not taken."""


def as_mac(value: str) -> str | None:
    """``value`` as ``aa:bb:cc:dd:ee:ff`` when it spells a MAC (``AA-BB-..``,
    ``aabb.ccdd.eeff``, ``aabbccddeeff``), else None."""
    text = value.strip()
    if not (_MACLIKE.match(text) or re.fullmatch(r"[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}", text)):
        return None
    try:
        return normalize_mac(text)
    except ValueError:
        return None


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(f"{key} is a {type(value).__name__}, not a string")
    if len(value) > MAX_TEXT:
        raise Refused(f"{key} is {len(value)} characters long (LLDP allows {MAX_TEXT})")
    if "\x00" in value:
        raise Refused(f"{key} holds a NUL character")
    return value


def _int(entry: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise Refused(f"{key} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _addresses(entry: dict[str, Any]) -> list[str]:
    value = entry.get("mgmt_addresses") or []
    if not isinstance(value, list) or len(value) > MAX_ADDRESSES:
        raise Refused(f"mgmt_addresses must be a list of at most {MAX_ADDRESSES} strings")
    out = []
    for address in value:
        if not isinstance(address, str) or len(address) > 64 or "\x00" in address:
            raise Refused("mgmt_addresses must hold strings of at most 64 characters")
        out.append(address)
    return out


def _vlans(entry: dict[str, Any]) -> list[dict[str, Any]]:
    value = entry.get("vlans") or []
    if not isinstance(value, list) or len(value) > MAX_VLANS:
        raise Refused(f"vlans must be a list of at most {MAX_VLANS} entries")
    out = []
    for vlan in value:
        if not isinstance(vlan, dict):
            raise Refused('vlans must hold {"id": N, "name": "..."} entries')
        vid = _int(vlan, "id", 1, 4094)
        if vid is None:
            raise Refused("a VLAN entry has no id")
        out.append({"id": vid, "name": _text(vlan, "name")})
    return out


def _legacy(entry: dict[str, Any]) -> dict[str, Any]:
    """lldpcli's summary in the current shape (subtypes guessed from the values)."""
    chassis_id, port = _text(entry, "chassis_id"), _text(entry, "port")
    return {
        "interface": entry.get("interface", ""),
        "mac": entry.get("mac", ""),
        "chassis_id": chassis_id,
        "chassis_id_subtype": "mac" if as_mac(chassis_id) else "local",
        "system_name": entry.get("chassis", ""),
        "port_id": port,
        "port_id_subtype": "mac" if as_mac(port) else "interface_name",
        "port_description": entry.get("port_description", ""),
    }


def normalise(entry: Any) -> dict[str, Any]:
    """One reported neighbour in the stored shape (see the module docstring); raises
    :class:`Refused` with the reason when the entry cannot be taken."""
    if not isinstance(entry, dict):
        raise Refused(f"an entry is a {type(entry).__name__}, not an object")
    if (
        "port_id" not in entry
        and "port_id_subtype" not in entry
        and ("port" in entry or "chassis" in entry)
    ):
        entry = _legacy(entry)
    out: dict[str, Any] = {key: _text(entry, key) for key in _TEXT}
    mac = _text(entry, "mac")
    if mac:
        try:
            mac = normalize_mac(mac)
        except ValueError:
            raise Refused(f"mac {mac!r} is not a MAC address") from None
    out["mac"] = mac
    if not out["interface"] and not mac:
        raise Refused("the entry names neither an interface nor a MAC")
    for key, allowed in (
        ("chassis_id_subtype", CHASSIS_SUBTYPES),
        ("port_id_subtype", PORT_SUBTYPES),
    ):
        if out[key] and out[key] not in allowed:
            raise Refused(f"{key} {out[key]!r} is not one of {', '.join(sorted(allowed))}")
    if out["chassis_id_subtype"] == "mac" and as_mac(out["chassis_id"]):
        out["chassis_id"] = as_mac(out["chassis_id"])
    out["mgmt_addresses"] = _addresses(entry)
    out["vlans"] = _vlans(entry)
    out["pvid"] = _int(entry, "pvid", 1, 4094)
    out["ttl"] = _int(entry, "ttl", 0, 65535)
    return {key: out[key] for key in KEYS}
