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

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import selectinload
from sqlmodel import Session, select

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
from provisiond.models import Bmc, CredentialSet, Machine, Pdu, Rack, Switch

KINDS = ("rack", "switch", "pdu", "machine")
SECTION = {"rack": "racks", "switch": "switches", "pdu": "pdus", "machine": "machines"}
FIELDS: dict[str, tuple[str, ...]] = {
    "rack": ("name", "site", "u_height", "power_budget_watts"),
    "switch": (
        *("name", "rack", "u_position", "u_height", "vendor", "model", "mgmt_address", "ports"),
    ),
    "pdu": ("name", "rack", "u_position", "u_height", "capacity_watts", "mgmt_address", "outlets"),
    "machine": (
        *("name", "rack", "u_position", "u_height", "serial", "vendor", "model", "arch"),
        *("cpus", "ram_mib", "power_watts", "tags", "disks", "root_device", "nics", "bmc"),
        "outlets",
    ),
}
PORT_FIELDS = ("name", "vlan", "description")
NIC_FIELDS = ("mac", "name", "pxe", "ip_address", "switch_port")
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


def _defaults(spec: type[Spec], names: tuple[str, ...], key: str = "") -> dict[str, Any]:
    """Each field's default, leaving out the identity ``key`` (which has none)."""
    return {n: spec.model_fields[n].default for n in names if n != key}


DEFAULTS = {kind: _defaults(SPECS[kind], FIELDS[kind], "name") for kind in KINDS}
PORT_DEFAULTS = _defaults(PortSpec, PORT_FIELDS, "name")
NIC_DEFAULTS = _defaults(NicSpec, NIC_FIELDS, "mac")
BMC_DEFAULTS = _defaults(BmcSpec, BMC_FIELDS)


def natural(text: str) -> tuple[Any, ...]:
    """Sort key that puts swp2 before swp10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


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
        form["nics"] = sorted(form["nics"], key=lambda n: (natural(n["name"]), n["mac"]))
        form["outlets"] = sorted(set(form["outlets"]), key=_outlet_key)
    return form


@dataclass
class Current:
    """What the database holds, as forms and as rows (kind -> name -> ...)."""

    forms: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    credential_sets: dict[str, int] = field(default_factory=dict)
    #: machine name -> its BMC's encrypted password, when one is stored
    secrets: dict[str, str] = field(default_factory=dict)


def load_current(session: Session) -> Current:
    racks = list(session.exec(select(Rack)))
    switches = list(session.exec(select(Switch).options(selectinload(Switch.ports))))  # type: ignore[arg-type]
    pdus = list(session.exec(select(Pdu).options(selectinload(Pdu.outlets))))  # type: ignore[arg-type]
    machines = list(
        session.exec(
            select(Machine).options(
                selectinload(Machine.nics),  # type: ignore[arg-type]
                selectinload(Machine.bmc),  # type: ignore[arg-type]
            )
        )
    )
    credential_sets = {c.id: c.name for c in session.exec(select(CredentialSet))}
    rack_of = {r.id: r.name for r in racks}
    port_ref = {p.id: f"{s.name}/{p.name}" for s in switches for p in s.ports}
    outlets_of: dict[int, list[str]] = {}
    for pdu in pdus:
        for outlet in pdu.outlets:
            if outlet.machine_id is not None:
                outlets_of.setdefault(outlet.machine_id, []).append(f"{pdu.name}/{outlet.number}")

    current = Current(credential_sets={name: id_ for id_, name in credential_sets.items() if id_})
    current.rows = {
        "rack": {r.name: r for r in racks},
        "switch": {s.name: s for s in switches},
        "pdu": {p.name: p for p in pdus},
        "machine": {m.name: m for m in machines},
    }
    forms: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
    for r in racks:
        forms["rack"][r.name] = {f: getattr(r, f) for f in FIELDS["rack"]}
    for s in switches:
        form = _placed(s, rack_of, FIELDS["switch"])
        form["ports"] = [{f: getattr(p, f) for f in PORT_FIELDS} for p in s.ports]
        forms["switch"][s.name] = normalize("switch", form)
    for p in pdus:
        form = _placed(p, rack_of, FIELDS["pdu"])
        form["outlets"] = [o.number for o in p.outlets]
        forms["pdu"][p.name] = normalize("pdu", form)
    for m in machines:
        form = _placed(m, rack_of, FIELDS["machine"])
        form["tags"], form["disks"] = list(m.tags), copy.deepcopy(m.disks)
        form["root_device"] = dict(m.root_device)
        form["nics"] = [
            {
                **{f: getattr(n, f) for f in NIC_FIELDS if f != "switch_port"},
                "switch_port": port_ref.get(n.switch_port_id) if n.switch_port_id else None,
            }
            for n in m.nics
        ]
        form["bmc"] = _bmc_form(m.bmc, credential_sets) if m.bmc else None
        form["outlets"] = outlets_of.get(m.id or 0, [])
        forms["machine"][m.name] = normalize("machine", form)
        if m.bmc and m.bmc.secret_encrypted:
            current.secrets[m.name] = m.bmc.secret_encrypted
    current.forms = forms
    return current


def _placed(row: Any, rack_of: dict[int | None, str], names: tuple[str, ...]) -> dict[str, Any]:
    form = {f: getattr(row, f) for f in names if f not in ("rack", "ports", "outlets", "nics")}
    form["rack"] = rack_of.get(row.rack_id) if row.rack_id is not None else None
    return {f: form.get(f) for f in names}


def _bmc_form(bmc: Bmc, credential_sets: dict[int | None, str]) -> dict[str, Any]:
    form = {f: getattr(bmc, f) for f in BMC_FIELDS if f != "credential_set"}
    form["credential_set"] = credential_sets.get(bmc.credential_set_id)
    return {f: form[f] for f in BMC_FIELDS}


def _merge_parts(
    current: list[dict[str, Any]], given: list[dict[str, Any]], key: str, defaults: dict[str, Any]
) -> list[dict[str, Any]]:
    stored = {part[key]: part for part in current}
    return [{key: g[key], **(stored.get(g[key]) or defaults), **g} for g in given]


def merge(entry: Entry, current: dict[str, Any] | None) -> dict[str, Any]:
    """The form ``entry`` asks for: its given keys over the stored form (or the defaults)."""
    kind, given = entry.kind, entry.given
    base = copy.deepcopy(current) if current else {"name": entry.name, **DEFAULTS[kind]}
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
        else:
            want[key] = copy.deepcopy(value)
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
