"""The inventory as plain data: read from the DB, merged with a file, compared field by field.

One form serves export, planning and comparison: each rack, switch, PDU and machine
is a dict with the keys of :data:`FIELDS`, references by name (``rack: r1``,
``switch_port: sw1/swp1``, outlets as ``pdu1/3``) and lists in a fixed order, so
two forms compare equal exactly when applying one over the other changes nothing.

Merging follows one rule: a key the file writes replaces the stored value (``null``
included); a key it leaves out keeps the stored value, or takes the default for a
new object. Lists of parts (``ports``, ``nics``, ``outlets``) are whole: a part
left out of a given list is removed. Inside a listed part the same rule applies
again, so a NIC's ``ip_address`` learned by inspection survives a file without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlmodel import Session

from provisiond.inventory.pdu_settings import WRITE_ONLY
from provisiond.inventory.spec import (
    BmcSpec,
    Entry,
    MachineSpec,
    NicSpec,
    PduSpec,
    PortSpec,
    RackSpec,
    Spec,
    SwitchSpec,
)
from provisiond.models import (
    Bmc,
    CredentialSet,
    Machine,
    Nic,
    Outlet,
    Pdu,
    Rack,
    Switch,
    SwitchPort,
)

KINDS = ("rack", "switch", "pdu", "machine")
SECTION = {"rack": "racks", "switch": "switches", "pdu": "pdus", "machine": "machines"}
FIELDS: dict[str, tuple[str, ...]] = {
    "rack": ("name", "site", "u_height", "power_budget_watts"),
    "switch": (
        *("name", "rack", "u_position", "u_height", "vendor", "model", "mgmt_address"),
        *("chassis_mac", "ports"),
    ),
    "pdu": (
        *("name", "rack", "u_position", "u_height", "capacity_watts", "mgmt_address", "driver"),
        *("snmp_port", "snmp_version", "snmp_username", "snmp_auth_protocol"),
        *("snmp_priv_protocol", "outlets"),
    ),
    "machine": (
        *("name", "rack", "u_position", "u_height", "serial", "vendor", "model", "arch"),
        *("cpus", "ram_mib", "power_watts", "tags", "disks", "root_device", "nics", "bmc"),
        "outlets",
    ),
}
PORT_FIELDS = ("name", "vlan", "description")
NIC_FIELDS = ("mac", "name", "pxe", "ip_address", "switch_port")  # switch_port last
BMC_FIELDS = (
    *("driver", "address", "port", "username", "credential_set", "cert_fingerprint"),
    "tls_verify",
)
#: The port of a BMC whose file and stored form give none.
BMC_PORTS = {"redfish": 443}
SPECS: dict[str, type[Spec]] = {
    "rack": RackSpec,
    "switch": SwitchSpec,
    "pdu": PduSpec,
    "machine": MachineSpec,
}
HIDDEN = "(hidden)"
#: Form fields that are not a column of the object's own row: the rack (a rack_id
#: there) and the parts, which have tables of their own.
_PARTS = ("rack", "ports", "outlets", "nics", "bmc")
_EMPTY_PARTS: dict[str, Callable[[], dict[str, Any]]] = {
    "switch": lambda: {"ports": []},
    "pdu": lambda: {"outlets": []},
    "machine": lambda: {"nics": [], "bmc": None, "outlets": []},
}


def _defaults(spec: type[Spec], names: tuple[str, ...], key: str = "") -> dict[str, Any]:
    """Each field's default, leaving out the identity ``key`` (which has none)."""
    return {n: spec.model_fields[n].default for n in names if n != key}


DEFAULTS = {kind: _defaults(SPECS[kind], FIELDS[kind], "name") for kind in KINDS}
PORT_DEFAULTS = _defaults(PortSpec, PORT_FIELDS, "name")
NIC_DEFAULTS = _defaults(NicSpec, NIC_FIELDS, "mac")
BMC_DEFAULTS = _defaults(BmcSpec, BMC_FIELDS)


_DIGITS = re.compile(r"(\d+)")


@lru_cache(maxsize=1 << 16)
def natural(text: str) -> tuple[Any, ...]:
    """Sort key that puts swp2 before swp10."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(text))


def split_ref(ref: str) -> tuple[str, str]:
    """``sw1/Ethernet1/1`` -> (``sw1``, ``Ethernet1/1``): names never hold a slash, ports may."""
    owner, _, part = ref.partition("/")
    return owner, part


def _outlet_key(ref: str) -> tuple[Any, ...]:
    pdu, number = split_ref(ref)
    return (*natural(pdu), int(number))


def normalize(kind: str, form: dict[str, Any]) -> dict[str, Any]:
    """Put the lists of ``form`` in their canonical order (in place) and return it."""
    if kind == "switch":
        form["ports"] = sorted(form["ports"], key=lambda p: natural(p["name"]))
    elif kind == "pdu":
        form["outlets"] = sorted(set(form["outlets"]))
    elif kind == "machine":
        if len(form["nics"]) > 1:
            form["nics"] = sorted(form["nics"], key=lambda n: (natural(n["name"]), n["mac"]))
        if len(form["outlets"]) > 1:
            form["outlets"] = sorted(set(form["outlets"]), key=_outlet_key)
    return form


class MachineRow(NamedTuple):
    """What --prune checks of a stored machine."""

    id: int
    state: str
    lock_owner: str | None
    lock_expires: datetime | None


@dataclass
class Current:
    """What the database holds: the forms (kind -> name -> form) and the ids to write by."""

    forms: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: kind -> name -> id
    ids: dict[str, dict[str, int]] = field(default_factory=dict)
    machines: dict[str, MachineRow] = field(default_factory=dict)
    credential_sets: dict[str, int] = field(default_factory=dict)
    #: machine name -> its BMC's encrypted password, when one is stored
    secrets: dict[str, str] = field(default_factory=dict)
    #: PDU name -> its encrypted SNMP secrets, when stored (inventory.pdu_settings)
    pdu_secrets: dict[str, str] = field(default_factory=dict)
    #: ``switch/port`` -> port id
    ports: dict[str, int] = field(default_factory=dict)
    #: ``pdu/number`` -> (outlet id, id of the machine plugged in or None)
    outlets: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    #: MAC -> (NIC id, machine id)
    nics: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: machine name -> its BMC's id
    bmcs: dict[str, int] = field(default_factory=dict)


def _rows(session: Session, table: Any, *columns: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` as a tuple of ``columns``, in id order: one query."""
    t = table.__table__
    query = select(*(t.c[c] for c in columns)).order_by(t.c.id)
    return [tuple(row) for row in session.connection().execute(query)]


def load_current(session: Session) -> Current:
    """The whole inventory in one query per table, as plain tuples (no ORM objects:
    10,000 machines with their NICs and BMCs load in a few tenths of a second)."""
    current = Current()
    plain = {kind: tuple(f for f in FIELDS[kind] if f not in _PARTS) for kind in KINDS}
    nic_fields, bmc_fields = NIC_FIELDS[:-1], tuple(f for f in BMC_FIELDS if f != "credential_set")
    racks = _rows(session, Rack, "id", *plain["rack"])
    ports = _rows(session, SwitchPort, "id", "switch_id", *PORT_FIELDS)
    outlets = _rows(session, Outlet, "id", "pdu_id", "number", "machine_id")
    placed = {
        kind: _rows(session, model, "id", "rack_id", *plain[kind])
        for kind, model in (("switch", Switch), ("pdu", Pdu), ("machine", Machine))
    }
    states = _rows(session, Machine, "name", "id", "state", "lock_owner", "lock_expires")
    nics = _rows(session, Nic, "id", "machine_id", "switch_port_id", *nic_fields)
    bmcs = _rows(
        session, Bmc, "id", "machine_id", "secret_encrypted", "credential_set_id", *bmc_fields
    )
    set_names = dict(_rows(session, CredentialSet, "id", "name"))
    pdus: Any = Pdu.__table__  # type: ignore[attr-defined]
    secret = pdus.c.secret_encrypted
    query = select(pdus.c.name, secret).where(secret.is_not(None))
    current.pdu_secrets = {name: token for name, token in session.connection().execute(query)}
    current.credential_sets = {name: id_ for id_, name in set_names.items()}

    forms: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
    rack_of: dict[int, str] = {}
    for id_, *values in racks:
        form = dict(zip(plain["rack"], values, strict=True))
        rack_of[id_] = form["name"]
        forms["rack"][form["name"]] = form
    current.ids["rack"] = {name: id_ for id_, name in rack_of.items()}
    name_of: dict[str, dict[int, str]] = {}
    for kind, rows in placed.items():
        name_of[kind] = {}
        for id_, rack_id, *values in rows:
            form = dict(zip(plain[kind], values, strict=True))
            form["rack"] = rack_of[rack_id] if rack_id is not None else None
            form.update(_EMPTY_PARTS[kind]())
            forms[kind][form["name"]] = form
            name_of[kind][id_] = form["name"]
        current.ids[kind] = {name: id_ for id_, name in name_of[kind].items()}
    switches, pdus, machines = (forms[k] for k in ("switch", "pdu", "machine"))
    switch_of, pdu_of, machine_of = (name_of[k] for k in ("switch", "pdu", "machine"))
    for id_, switch_id, *values in ports:
        switch = switch_of[switch_id]
        current.ports[f"{switch}/{values[0]}"] = id_
        switches[switch]["ports"].append(dict(zip(PORT_FIELDS, values, strict=True)))
    for id_, pdu_id, number, machine_id in outlets:
        pdu = pdu_of[pdu_id]
        ref = f"{pdu}/{number}"
        current.outlets[ref] = (id_, machine_id)
        pdus[pdu]["outlets"].append(number)
        if machine_id is not None:
            machines[machine_of[machine_id]]["outlets"].append(ref)
    port_ref = {i: ref for ref, i in current.ports.items()}
    for id_, machine_id, port_id, *values in nics:
        nic = dict(zip(nic_fields, values, strict=True))
        nic["switch_port"] = port_ref[port_id] if port_id is not None else None
        current.nics[nic["mac"]] = (id_, machine_id)
        machines[machine_of[machine_id]]["nics"].append(nic)
    for id_, machine_id, secret, set_id, *values in bmcs:
        name = machine_of[machine_id]
        current.bmcs[name] = id_
        bmc = dict(zip(bmc_fields, values, strict=True))
        bmc["credential_set"] = set_names.get(set_id) if set_id is not None else None
        machines[name]["bmc"] = {f: bmc[f] for f in BMC_FIELDS}
        if secret:
            current.secrets[name] = secret
    for kind in ("switch", "pdu", "machine"):
        fields = FIELDS[kind]
        forms[kind] = {
            name: normalize(kind, {f: form[f] for f in fields})
            for name, form in forms[kind].items()
        }
    current.forms = forms
    current.machines = {row[0]: MachineRow(*row[1:]) for row in states}
    return current


def _merge_parts(
    current: list[dict[str, Any]], given: list[dict[str, Any]], key: str, defaults: dict[str, Any]
) -> list[dict[str, Any]]:
    stored = {part[key]: part for part in current}
    return [{key: g[key], **(stored.get(g[key]) or defaults), **g} for g in given]


def merge(entry: Entry, current: dict[str, Any] | None) -> dict[str, Any]:
    """The form ``entry`` asks for: its given keys over the stored form (or the defaults)."""
    kind, given = entry.kind, entry.given
    # Forms are never changed once made, so the new one shares the values it keeps.
    base = current if current else {"name": entry.name, **DEFAULTS[kind]}
    want = {f: base[f] for f in FIELDS[kind]}
    for key, value in given.items():
        if key == "ports":
            want[key] = _merge_parts(base["ports"], value, "name", PORT_DEFAULTS)
        elif key == "nics":
            want[key] = _merge_parts(base["nics"], value, "mac", NIC_DEFAULTS)
        elif key == "bmc" and value is not None:
            fields = {k: v for k, v in value.items() if k in BMC_FIELDS}
            bmc = want[key] = {**(base["bmc"] or BMC_DEFAULTS), **fields}
            if bmc["port"] is None:
                bmc["port"] = BMC_PORTS.get(bmc["driver"], 623)
        elif key in WRITE_ONLY:
            continue  # a PDU's SNMP secrets: stored apart, never in the form
        else:
            want[key] = value
    return normalize(kind, want)


def _keyed(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def diff(kind: str, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Changed fields as ``{"field": {"from": old, "to": new}}``; parts keyed by name or MAC."""
    changes: dict[str, dict[str, Any]] = {}
    before = old or {}
    for name in FIELDS[kind]:
        if name == "name":
            continue
        a, b = before.get(name), new.get(name)
        if name in ("ports", "nics"):
            key = "name" if name == "ports" else "mac"
            olds, news = _keyed(a or [], key), _keyed(b or [], key)
            for k in [*olds, *[k for k in news if k not in olds]]:
                if olds.get(k) != news.get(k):
                    changes[f"{name}[{k}]"] = {"from": olds.get(k), "to": news.get(k)}
        elif name == "bmc" and isinstance(a, dict) and isinstance(b, dict):
            for sub in BMC_FIELDS:
                if a.get(sub) != b.get(sub):
                    changes[f"bmc.{sub}"] = {"from": a.get(sub), "to": b.get(sub)}
        elif a != b:
            changes[name] = {"from": a, "to": b}
    return changes
