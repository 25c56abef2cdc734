"""Carry out a checked inventory plan in the caller's transaction.

The order keeps every unique constraint true after each flush, on SQLite as on
PostgreSQL (which checks them per statement): first release what changes hands
(NICs removed or re-wired, outlets unplugged, pruned machines), then write racks,
switches, PDUs and machines, and last delete pruned switches, PDUs and racks once
nothing stands in them. Only objects the plan creates or updates are touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlmodel import Session, col, select

from provisiond import events
from provisiond.events import EventKind
from provisiond.inventory.state import FIELDS
from provisiond.lifecycle import Ev, advance
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
from provisiond.secrets import SecretBox

if TYPE_CHECKING:
    from provisiond.inventory.plan import Draft

_PLAIN = {
    kind: tuple(f for f in names if f not in ("name", "rack", "ports", "outlets", "nics", "bmc"))
    for kind, names in FIELDS.items()
}


T = TypeVar("T", Switch, Pdu)


def _id(row: Switch | Pdu | Machine) -> int:
    assert row.id is not None, "flushed before its parts are added"
    return row.id


class _Writer:
    def __init__(self, session: Session, draft: Draft, secrets: SecretBox, actor: str) -> None:
        self.session, self.draft, self.secrets, self.actor = session, draft, secrets, actor
        self.rows = draft.current.rows
        self.now = utcnow()
        self.actions = {(c.kind, c.name): c for c in draft.plan.changes}
        self.rack_ids: dict[str, int] = {}
        self.port_ids: dict[str, int] = {}
        self.outlets: dict[str, Outlet] = {}

    def changed(self, kind: str) -> list[tuple[str, dict[str, Any], Any]]:
        """(name, desired form, row or None) of what the plan creates or updates."""
        return [
            (name, form, self.rows[kind].get(name))
            for name, form in self.draft.desired[kind].items()
            if self.actions[(kind, name)].action in ("create", "update")
        ]

    def audit(self, machine: Machine, event: str, message: str) -> None:
        events.record(
            self.session,
            EventKind.AUDIT,
            event,
            flush=False,  # the write loop flushes in batches
            at=self.now,
            machine=machine,
            actor=self.actor,
            message=message,
        )

    def run(self) -> None:
        self.release()
        self.session.flush()
        self.racks()
        self.switches()
        self.pdus()
        self.machines()
        self.prune_containers()
        self.session.flush()

    def release(self) -> None:
        forms = self.draft.current.forms["machine"]
        pruned = set(self.draft.deletes["machine"])
        keep_outlets: dict[str, set[str]] = {}
        for name, want, row in self.changed("machine"):
            if row is None:
                continue
            keep_outlets[name] = set(want["outlets"])
            wanted = {n["mac"]: n for n in want["nics"]}
            stored = {n["mac"]: n for n in forms[name]["nics"]}
            for nic in list(row.nics):
                if nic.mac not in wanted:
                    row.nics.remove(nic)
                elif stored[nic.mac]["switch_port"] != wanted[nic.mac]["switch_port"]:
                    nic.switch_port_id = None
        names = {m.id: m.name for m in self.rows["machine"].values()}
        for pdu in self.rows["pdu"].values():
            for outlet in pdu.outlets:
                owner = names.get(outlet.machine_id)
                if owner is None:
                    continue
                ref = f"{pdu.name}/{outlet.number}"
                unplugged = owner in keep_outlets and ref not in keep_outlets[owner]
                if owner in pruned or unplugged:
                    outlet.machine_id = None
        for name in pruned:
            row = self.rows["machine"][name]
            self.audit(row, "delete", "deleted by inventory apply --prune")
            self.session.delete(row)

    def _placed(self, row: T, kind: str, want: dict[str, Any]) -> T:
        self._place(row, kind, want)
        if row.id is None:
            self.session.add(row)
            self.session.flush()  # its ports or outlets need its id
        return row

    def _place(self, row: Any, kind: str, want: dict[str, Any]) -> None:
        for key in _PLAIN[kind]:
            if getattr(row, key) != want[key]:
                setattr(row, key, want[key])
        if kind != "rack":
            row.rack_id = self.rack_ids[want["rack"]] if want["rack"] is not None else None

    def racks(self) -> None:
        for name, want, row in self.changed("rack"):
            row = row or Rack(name=name)
            self._place(row, "rack", want)
            self.session.add(row)
        self.session.flush()
        self.rack_ids = {r.name: r.id for r in self.session.exec(select(Rack)) if r.id is not None}

    def switches(self) -> None:
        for name, want, row in self.changed("switch"):
            row = self._placed(row or Switch(name=name), "switch", want)
            ports = {p.name: p for p in row.ports}
            wanted = {p["name"]: p for p in want["ports"]}
            for port_name, old in ports.items():
                if port_name not in wanted:
                    row.ports.remove(old)
            for port_name, spec in wanted.items():
                port = ports.get(port_name) or SwitchPort(switch_id=_id(row), name=port_name)
                if port.id is None:
                    row.ports.append(port)
                port.vlan, port.description = spec["vlan"], spec["description"]
            self.session.add(row)
        self.session.flush()
        query = select(Switch.name, SwitchPort.name, SwitchPort.id).join(
            SwitchPort, col(SwitchPort.switch_id) == col(Switch.id)
        )
        self.port_ids = {f"{s}/{p}": i for s, p, i in self.session.exec(query) if i is not None}

    def pdus(self) -> None:
        for name, want, row in self.changed("pdu"):
            row = self._placed(row or Pdu(name=name), "pdu", want)
            outlets = {o.number: o for o in row.outlets}
            for number, outlet in outlets.items():
                if number not in want["outlets"]:
                    row.outlets.remove(outlet)
            row.outlets.extend(
                Outlet(pdu_id=_id(row), number=n) for n in want["outlets"] if n not in outlets
            )
            self.session.add(row)
        self.session.flush()
        query = select(Pdu.name, Outlet).join(Outlet, col(Outlet.pdu_id) == col(Pdu.id))
        self.outlets = {f"{p}/{o.number}": o for p, o in self.session.exec(query)}

    def machines(self) -> None:
        for name, want, row in self.changed("machine"):
            if row is None:
                row = Machine(name=name)
                self._place(row, "machine", want)
                advance(self.session, row, Ev.ENROLL, actor=self.actor, reason="inventory apply")
            else:
                self._place(row, "machine", want)
                row.updated_at = self.now
                fields = ", ".join(self.actions[("machine", name)].fields)
                self.audit(row, "inventory", f"inventory apply changed {fields}")
            self.session.add(row)
            self.nics(row, want["nics"])
            self.bmc(row, name, want["bmc"])
            for ref in want["outlets"]:
                self.outlets[ref].machine_id = row.id

    def nics(self, row: Machine, wanted: list[dict[str, Any]]) -> None:
        nics = {n.mac: n for n in row.nics}
        for spec in wanted:
            nic = nics.get(spec["mac"])
            if nic is None:
                nic = Nic(machine_id=_id(row), mac=spec["mac"])
                row.nics.append(nic)
            nic.name, nic.pxe, nic.ip_address = spec["name"], spec["pxe"], spec["ip_address"]
            ref = spec["switch_port"]
            nic.switch_port_id = self.port_ids[ref] if ref is not None else None

    def bmc(self, row: Machine, name: str, want: dict[str, Any] | None) -> None:
        if want is None:
            row.bmc = None  # delete-orphan removes the stored BMC and its password
            return
        bmc = row.bmc or Bmc(machine_id=_id(row))
        bmc.driver, bmc.address, bmc.port = want["driver"], want["address"], want["port"]
        bmc.username = want["username"]
        bmc.cert_fingerprint, bmc.tls_verify = want["cert_fingerprint"], want["tls_verify"]
        sets = self.draft.current.credential_sets
        bmc.credential_set_id = sets[want["credential_set"]] if want["credential_set"] else None
        if name in self.draft.passwords:
            bmc.secret_encrypted = self.secrets.encrypt(self.draft.passwords[name])
        row.bmc = bmc

    def prune_containers(self) -> None:
        for kind in ("switch", "pdu", "rack"):
            for name in self.draft.deletes[kind]:
                self.session.delete(self.rows[kind][name])
            self.session.flush()  # racks go last: switches and PDUs must be gone first


def write(session: Session, draft: Draft, *, secrets: SecretBox, actor: str) -> None:
    _Writer(session, draft, secrets, actor).run()
