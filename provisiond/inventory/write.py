"""Carry out a checked inventory plan in the caller's transaction, in bulk.

Every table is written with a few set-based statements whatever the number of
machines: one executemany per kind of change (insert, update of a set of columns,
delete), one query per table to learn the ids of what was inserted, and one
multi-row INSERT for all the events. Nothing is read row by row and no ORM object
is made: 10,000 machines are written in about a second.

The order keeps every unique constraint true after each statement, on SQLite as on
PostgreSQL (which checks them per statement): first release what changes hands
(NICs removed or re-wired, outlets unplugged, pruned machines), then write racks,
switches, PDUs and machines, and last delete pruned switches, PDUs and racks once
nothing stands in them. Only what the plan creates or updates is written, and of an
updated row only the columns that change (plus a machine's ``updated_at``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlmodel import Session

from provisiond import events
from provisiond.config import StateTimeouts
from provisiond.events import EventKind
from provisiond.inventory.state import FIELDS
from provisiond.lifecycle import TRANSITIONAL, Ev, State, target_state
from provisiond.models import (
    Bmc,
    Machine,
    Nic,
    Outlet,
    Pdu,
    Rack,
    Switch,
    SwitchPort,
    utcnow,
)
from provisiond.models.base import new_uuid
from provisiond.secrets import SecretBox

if TYPE_CHECKING:
    from provisiond.inventory.plan import Draft

_PLAIN = {
    kind: tuple(f for f in names if f not in ("name", "rack", "ports", "outlets", "nics", "bmc"))
    for kind, names in FIELDS.items()
}
_TABLES: dict[str, Table] = {
    "rack": Rack.__table__,  # type: ignore[attr-defined]
    "switch": Switch.__table__,  # type: ignore[attr-defined]
    "pdu": Pdu.__table__,  # type: ignore[attr-defined]
    "machine": Machine.__table__,  # type: ignore[attr-defined]
}
_PORT: Table = SwitchPort.__table__  # type: ignore[attr-defined]
_OUTLET: Table = Outlet.__table__  # type: ignore[attr-defined]
_NIC: Table = Nic.__table__  # type: ignore[attr-defined]
_BMC: Table = Bmc.__table__  # type: ignore[attr-defined]
_BMC_COLUMNS = ("driver", "address", "port", "username", "cert_fingerprint", "tls_verify")

Row = dict[str, Any]


class _Writer:
    def __init__(self, session: Session, draft: Draft, secrets: SecretBox, actor: str) -> None:
        self.session, self.draft, self.secrets, self.actor = session, draft, secrets, actor
        self.conn = session.connection()
        self.current = draft.current
        self.now = utcnow()
        self.actions = {(c.kind, c.name): c for c in draft.plan.changes}
        self.ids = {kind: dict(ids) for kind, ids in self.current.ids.items()}
        self.ports = dict(self.current.ports)
        self.outlets = {ref: id_ for ref, (id_, _) in self.current.outlets.items()}
        #: outlet ref -> the machine id plugged in once the release is done
        self.plugged = {ref: owner for ref, (_, owner) in self.current.outlets.items()}
        self.events: list[tuple[EventKind, str, dict[str, Any]]] = []
        # A machine the file adds is enrolled as lifecycle.advance(enroll) would do it.
        self.enrolled = target_state(State.NEW.value, Ev.ENROLL)
        timeout = getattr(StateTimeouts(), self.enrolled.value, None)
        self.lifecycle = {
            "state": self.enrolled.value,
            "state_changed_at": self.now,
            "deadline": self.now + timedelta(seconds=timeout)
            if self.enrolled in TRANSITIONAL and timeout
            else None,
            "updated_at": self.now,
        }

    # --- set-based statements ------------------------------------------------------

    def insert(self, table: Table, rows: list[Row]) -> None:
        if rows:
            self.conn.execute(insert(table), rows)

    def update(self, table: Table, rows: Iterable[tuple[int, Row]]) -> None:
        """``(id, {column: value})`` pairs: one executemany per set of columns."""
        groups: dict[tuple[str, ...], list[Row]] = {}
        for id_, values in rows:
            if values:
                bound = {f"v_{k}": v for k, v in values.items()}
                groups.setdefault(tuple(values), []).append({"k_id": id_, **bound})
        for columns, params in groups.items():
            statement = (
                update(table)
                .where(table.c.id == bindparam("k_id"))
                .values({c: bindparam(f"v_{c}") for c in columns})
            )
            self.conn.execute(statement, params)

    def delete(self, table: Table, ids: Iterable[int], column: str = "id") -> None:
        params = [{"k_id": id_} for id_ in ids]
        if params:
            self.conn.execute(delete(table).where(table.c[column] == bindparam("k_id")), params)

    def learn_ids(self, kind: str) -> None:
        table = _TABLES[kind]
        self.ids[kind] = {n: i for n, i in self.conn.execute(select(table.c.name, table.c.id))}

    # --- the plan ------------------------------------------------------------------

    def changed(self, kind: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """(name, desired form, stored form or None) of what the plan creates or updates."""
        stored = self.current.forms[kind]
        return [
            (name, form, stored.get(name))
            for name, form in self.draft.desired[kind].items()
            if self.actions[(kind, name)].action in ("create", "update")
        ]

    def run(self) -> None:
        self.release()
        for kind in ("rack", "switch", "pdu", "machine"):
            self.objects(kind)
        self.ports_and_outlets()
        self.machine_parts()
        self.prune_containers()
        events.record_many(self.session, self.events)

    def event(self, kind: EventKind, event: str, name: str, **fields: Any) -> None:
        fields.update(machine_id=self.ids["machine"].get(name), machine_name=name)
        self.events.append((kind, event, {"at": self.now, "actor": self.actor, **fields}))

    def release(self) -> None:
        """Free what changes hands, so that no unique constraint is broken on the way."""
        pruned = self.draft.deletes["machine"]
        unwire: list[tuple[int, Row]] = []
        gone: list[int] = []
        keep: dict[int, set[str]] = {}
        for name, want, old in self.changed("machine"):
            if old is None:
                continue
            keep[self.ids["machine"][name]] = set(want["outlets"])
            wanted = {n["mac"]: n for n in want["nics"]}
            for nic in old["nics"]:
                id_ = self.current.nics[nic["mac"]][0]
                if nic["mac"] not in wanted:
                    gone.append(id_)
                elif nic["switch_port"] != wanted[nic["mac"]]["switch_port"]:
                    unwire.append((id_, {"switch_port_id": None}))
        self.update(_NIC, unwire)
        self.delete(_NIC, gone)
        pruned_ids = {self.ids["machine"][name] for name in pruned}
        unplug = [
            ref
            for ref, owner in self.plugged.items()
            if owner is not None
            and (owner in pruned_ids or (owner in keep and ref not in keep[owner]))
        ]
        self.update(_OUTLET, ((self.outlets[ref], {"machine_id": None}) for ref in unplug))
        for ref in unplug:
            self.plugged[ref] = None
        for name in pruned:
            self.event(
                EventKind.AUDIT, "delete", name, message="deleted by inventory apply --prune"
            )
        self.delete(_NIC, pruned_ids, "machine_id")
        self.delete(_BMC, pruned_ids, "machine_id")
        self.delete(_TABLES["machine"], pruned_ids)

    def objects(self, kind: str) -> None:
        """Insert and update the racks, switches, PDUs or machines themselves."""
        table, plain = _TABLES[kind], _PLAIN[kind]
        new: list[Row] = []
        changes: list[tuple[int, Row]] = []
        changed = self.changed(kind)
        for name, want, old in changed:
            values = {f: want[f] for f in plain}
            if kind != "rack":
                values["rack_id"] = self.ids["rack"][want["rack"]] if want["rack"] else None
            if kind == "pdu":  # every new row has the column: one executemany
                secret = self.draft.pdu_secrets.get(name)
                if secret is not None or old is None:
                    values["secret_encrypted"] = secret and self.secrets.encrypt(secret)
            if old is None:
                new.append({"name": name, **values, **self.created_columns(kind)})
                continue
            diff = {f: values[f] for f in plain if values[f] != old[f]}
            if "secret_encrypted" in values:
                diff["secret_encrypted"] = values["secret_encrypted"]
            if kind != "rack" and want["rack"] != old["rack"]:
                diff["rack_id"] = values["rack_id"]
            if kind == "machine":
                diff["updated_at"] = self.now
            changes.append((self.ids[kind][name], diff))
        self.insert(table, new)
        self.update(table, changes)
        if new:
            self.learn_ids(kind)
        if kind != "machine":
            return
        for name, _, old in changed:  # in the file's order, once every machine has its id
            if old is None:
                self.event(EventKind.TRANSITION, Ev.ENROLL.value, name,
                           from_state=None, to_state=self.enrolled.value,
                           message="inventory apply")  # fmt: skip
            else:
                fields = ", ".join(self.actions[(kind, name)].fields)
                self.event(EventKind.AUDIT, "inventory", name,
                           message=f"inventory apply changed {fields}")  # fmt: skip

    def created_columns(self, kind: str) -> Row:
        if kind == "rack":
            return {"created_at": self.now}
        if kind != "machine":
            return {}
        # What lifecycle.advance(enroll) sets on a machine it stores, for a bulk insert.
        return {"uuid": new_uuid(), **self.lifecycle, "created_at": self.now}

    def ports_and_outlets(self) -> None:
        port_ids = self.ports
        new_ports: list[Row] = []
        port_changes: list[tuple[int, Row]] = []
        dead_ports: list[int] = []
        for name, want, old in self.changed("switch"):
            stored = {p["name"]: p for p in old["ports"]} if old else {}
            wanted = {p["name"]: p for p in want["ports"]}
            dead_ports += [port_ids[f"{name}/{p}"] for p in stored if p not in wanted]
            for port, spec in wanted.items():
                values = {"vlan": spec["vlan"], "description": spec["description"]}
                if port not in stored:
                    new_ports.append(
                        {"switch_id": self.ids["switch"][name], "name": port, **values}
                    )
                else:
                    diff = {k: v for k, v in values.items() if v != stored[port][k]}
                    port_changes.append((port_ids[f"{name}/{port}"], diff))
        self.delete(_PORT, dead_ports)
        self.update(_PORT, port_changes)
        self.insert(_PORT, new_ports)
        if new_ports:
            query = select(_TABLES["switch"].c.name, _PORT.c.name, _PORT.c.id).join(
                _TABLES["switch"], _PORT.c.switch_id == _TABLES["switch"].c.id
            )
            self.ports = {f"{s}/{p}": i for s, p, i in self.conn.execute(query)}

        # New outlets are inserted plugged into the machine that wants one, so that
        # only the outlets that already exist and change hands need an UPDATE.
        wanted_by = {
            ref: self.ids["machine"][name]
            for name, want, _ in self.changed("machine")
            for ref in want["outlets"]
        }
        new_outlets: list[Row] = []
        dead_outlets: list[int] = []
        for name, want, old in self.changed("pdu"):
            had = set(old["outlets"]) if old else set()
            dead_outlets += [self.outlets[f"{name}/{n}"] for n in had - set(want["outlets"])]
            pdu_id = self.ids["pdu"][name]
            for n in want["outlets"]:
                if n not in had:
                    owner = self.plugged[f"{name}/{n}"] = wanted_by.get(f"{name}/{n}")
                    new_outlets.append({"pdu_id": pdu_id, "number": n, "machine_id": owner})
        self.delete(_OUTLET, dead_outlets)
        self.insert(_OUTLET, new_outlets)

    def machine_parts(self) -> None:
        """NICs, BMCs and outlets of the machines the plan creates or updates."""
        new_nics: list[Row] = []
        nic_changes: list[tuple[int, Row]] = []
        new_bmcs: list[Row] = []
        bmc_changes: list[tuple[int, Row]] = []
        dead_bmcs: list[int] = []
        plug: list[tuple[int, Row]] = []
        sets = self.current.credential_sets
        passwords = self.draft.passwords
        for name, want, old in self.changed("machine"):
            machine_id = self.ids["machine"][name]
            stored = {n["mac"]: n for n in old["nics"]} if old else {}
            for nic in want["nics"]:
                ref = nic["switch_port"]
                values = {
                    "name": nic["name"],
                    "pxe": nic["pxe"],
                    "ip_address": nic["ip_address"],
                    "switch_port_id": self.ports[ref] if ref is not None else None,
                }
                was = stored.get(nic["mac"])
                if was is None:
                    new_nics.append({"machine_id": machine_id, "mac": nic["mac"], **values})
                    continue
                diff = {k: values[k] for k in ("name", "pxe", "ip_address") if values[k] != was[k]}
                if ref != was["switch_port"]:
                    diff["switch_port_id"] = values["switch_port_id"]
                nic_changes.append((self.current.nics[nic["mac"]][0], diff))

            bmc, old_bmc = want["bmc"], old["bmc"] if old else None
            bmc_id = self.current.bmcs.get(name)
            if bmc is None:
                if bmc_id is not None:
                    dead_bmcs.append(bmc_id)  # and the stored password with it
            else:
                values = {c: bmc[c] for c in _BMC_COLUMNS}
                values["credential_set_id"] = (
                    sets[bmc["credential_set"]] if bmc["credential_set"] else None
                )
                if name in passwords:
                    values["secret_encrypted"] = self.secrets.encrypt(passwords[name])
                if bmc_id is None:
                    values.setdefault("secret_encrypted", None)
                    new_bmcs.append({"machine_id": machine_id, **values})
                else:
                    assert old_bmc is not None
                    old_set = old_bmc["credential_set"]
                    old_values = {
                        **old_bmc,
                        "credential_set_id": sets[old_set] if old_set else None,
                    }
                    diff = {
                        k: v
                        for k, v in values.items()
                        if k == "secret_encrypted" or v != old_values[k]
                    }
                    bmc_changes.append((bmc_id, diff))

            for ref in want["outlets"]:
                if self.plugged[ref] != machine_id:  # an outlet that was there already
                    plug.append((self.outlets[ref], {"machine_id": machine_id}))
                    self.plugged[ref] = machine_id
        self.update(_NIC, nic_changes)
        self.insert(_NIC, new_nics)
        self.delete(_BMC, dead_bmcs)
        self.update(_BMC, bmc_changes)
        self.insert(_BMC, new_bmcs)
        self.update(_OUTLET, plug)

    def prune_containers(self) -> None:
        # Racks go last: switches and PDUs must be gone first.
        for kind, parts in (("switch", _PORT), ("pdu", _OUTLET), ("rack", None)):
            ids = [self.ids[kind][name] for name in self.draft.deletes[kind]]
            if parts is not None:
                self.delete(parts, ids, "switch_id" if kind == "switch" else "pdu_id")
            self.delete(_TABLES[kind], ids)


def write(session: Session, draft: Draft, *, secrets: SecretBox, actor: str) -> None:
    _Writer(session, draft, secrets, actor).run()
