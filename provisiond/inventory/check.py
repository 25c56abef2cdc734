"""The second pass over an inventory file: checks of the state it would leave behind.

The state checked is the whole inventory after the apply: the file's entries
merged over the database, plus what the database keeps (or, with ``--prune``,
only the file). So a MAC is a duplicate whether the other copy is in the file or
on a machine the file does not mention, and a port that the file removes is a
problem while a machine outside the file is still wired to it.

Each problem names the entry (path and line) that causes it: the later of two
claims to one MAC, port, outlet or rack unit, or the switch or PDU entry that
removes a part still in use.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from provisiond.errors import Problem
from provisiond.inventory import pdu_settings
from provisiond.inventory.placement import Placed, check_rack
from provisiond.inventory.spec import Document, Entry, Loc
from provisiond.inventory.state import Current, split_ref
from provisiond.inventory.yamlfile import format_path
from provisiond.lifecycle import RESTING, State

#: Machines --prune may delete. Active machines are at rest but in use: release them first.
PRUNABLE = RESTING - {State.ACTIVE}


@dataclass
class Item:
    """One object of the resulting inventory; ``entry`` is None when kept from the database."""

    kind: str
    name: str
    form: dict[str, Any]
    entry: Entry | None = None


@dataclass
class Checker:
    doc: Document
    current: Current
    items: dict[str, dict[str, Item]]
    prune: bool
    env: dict[str, str]
    problems: list[Problem] = field(default_factory=list)

    # --- where a problem is reported -------------------------------------------

    def at(self, item: Item, sub: Loc, message: str) -> None:
        """Report on ``sub`` of the item's entry, or on the entry when it did not write ``sub``."""
        if item.entry is None:
            self.problems.append(Problem(f"{item.kind} {item.name} (not in this file)", message))
        elif sub and sub[0] in item.entry.given:
            self.problems.append(self.doc.problem((*item.entry.loc, *sub), message))
        else:
            note = f" ({sub[0]} kept from the database)" if sub else ""
            self.problems.append(self.doc.problem(item.entry.loc, message + note))

    def describe(self, item: Item) -> str:
        if item.entry is None:
            return f"machine {item.name} (in the database, not in this file)"
        return f"machine {item.name} (line {item.entry.line})"

    def unknown(self, kind: str, name: str) -> str:
        if self.prune and name in self.current.forms[kind]:
            return f"{kind} {name} is not in this file, so --prune would delete it"
        close = difflib.get_close_matches(name, list(self.items[kind]), n=1, cutoff=0.6)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        where = "this file" if self.prune else "this file or the database"
        return f"no {kind} named {name!r} in {where}{maybe}"

    # --- the checks -----------------------------------------------------------------

    def run(self) -> list[Problem]:
        self.racks()
        self.duplicate_parts()
        self.nics()
        self.outlets()
        self.bmcs()
        self.pdus()
        return self.problems

    def placed(self) -> list[Item]:
        return [i for kind in ("switch", "pdu", "machine") for i in self.items[kind].values()]

    def racks(self) -> None:
        members: dict[str, list[Item]] = {}
        for item in self.placed():
            rack = item.form["rack"]
            if rack is None:
                if item.form["u_position"] is not None:
                    self.at(item, ("u_position",), "u_position needs a rack")
            elif rack in self.items["rack"]:
                members.setdefault(rack, []).append(item)
            elif rack not in self.doc.invalid["rack"]:
                self.at(item, ("rack",), self.unknown("rack", rack))
        for name, rack in self.items["rack"].items():
            inside = members.get(name, [])
            if rack.entry is None and all(i.entry is None for i in inside):
                continue  # nothing in this file touches the rack
            placed = [
                Placed(
                    i.kind,
                    i.name,
                    i.form["u_position"],
                    i.form["u_height"],
                    format_path(i.entry.loc)
                    if i.entry
                    else f"{i.kind} {i.name} (not in this file)",
                    i.entry.line if i.entry else None,
                )
                for i in inside
            ]
            self.problems += check_rack(name, rack.form["u_height"], placed)

    @staticmethod
    def ident(key: str, part: Any) -> Any:
        """What makes a part unique in its list: a port's name, a NIC's MAC, an outlet."""
        if isinstance(part, dict):
            return part["mac"] if key == "nics" else part["name"]
        return part

    def duplicate_parts(self) -> None:
        lists = (
            ("switch", "ports", "port"),
            ("pdu", "outlets", "outlet"),
            ("machine", "nics", "NIC"),
            ("machine", "outlets", "outlet"),
        )
        for kind, key, label in lists:
            for item in self.items[kind].values():
                if item.entry is None or key not in item.entry.given:
                    continue
                seen: set[Any] = set()
                for index, part in enumerate(item.entry.given[key]):
                    ident = self.ident(key, part)
                    if ident in seen:
                        loc = (*item.entry.loc, key, index)
                        self.problems.append(
                            self.doc.problem(loc, f"{label} {ident} is listed twice")
                        )
                    seen.add(ident)

    def _claims(self, key: str) -> list[tuple[Item, Any, int | None]]:
        """(machine, part, index in the file's list or None when kept), kept parts first."""
        kept: list[tuple[Item, Any, int | None]] = []
        given: list[tuple[Item, Any, int | None]] = []
        for item in self.items["machine"].values():
            if item.entry is None or key not in item.entry.given:
                kept += [(item, part, None) for part in item.form[key]]
                continue
            parts = {self.ident(key, part): part for part in item.form[key]}
            seen: set[Any] = set()
            for index, raw in enumerate(item.entry.given[key]):
                ident = self.ident(key, raw)
                if ident not in seen:  # a repeat is reported by duplicate_parts
                    seen.add(ident)
                    given.append((item, parts[ident], index))
        given.sort(key=lambda c: ((c[0].entry.line or 0) if c[0].entry else 0, c[2] or 0))
        return kept + given

    def _removed_part(self, owner: Item | None, key: str, message: str, fallback: Item) -> None:
        """A kept claim on a part that this apply removes: blame the entry that removes it."""
        if owner is not None and owner.entry is not None and key in owner.entry.given:
            self.problems.append(self.doc.problem((*owner.entry.loc, key), message))
        else:
            self.at(fallback, (), message)

    def nics(self) -> None:
        macs: dict[str, Item] = {}
        ports: dict[str, tuple[Item, str]] = {}
        for item, nic, index in self._claims("nics"):
            loc: Loc = ("nics", index if index is not None else 0)
            mac, ref = nic["mac"], nic["switch_port"]
            if mac in macs:
                self.at(item, (*loc, "mac"), f"MAC {mac} is already on {self.describe(macs[mac])}")
            macs.setdefault(mac, item)
            if ref is None:
                continue
            switch_name, port = split_ref(ref)
            switch = self.items["switch"].get(switch_name)
            if switch_name in self.doc.invalid["switch"]:
                continue
            if switch is None:
                message = f"NIC {mac}: " + self.unknown("switch", switch_name)
                if index is None:
                    self._removed_part(None, "ports", message, item)
                else:
                    self.at(item, (*loc, "switch_port"), message)
            elif port not in {p["name"] for p in switch.form["ports"]}:
                if index is None:
                    message = f"port {port} is removed, but NIC {mac} of {self.describe(item)} "
                    self._removed_part(switch, "ports", message + "is wired to it", item)
                else:
                    self.at(item, (*loc, "switch_port"), f"switch {switch_name} has no port {port}")
            elif ref in ports:
                other, other_mac = ports[ref]
                message = f"switch port {ref} is already used by NIC {other_mac} of "
                self.at(item, (*loc, "switch_port"), message + self.describe(other))
            else:
                ports[ref] = (item, mac)

    def outlets(self) -> None:
        used: dict[str, Item] = {}
        for item, ref, index in self._claims("outlets"):
            loc: Loc = ("outlets", index if index is not None else 0)
            pdu_name, number = split_ref(ref)
            pdu = self.items["pdu"].get(pdu_name)
            if pdu_name in self.doc.invalid["pdu"]:
                continue
            if pdu is None:
                message = f"outlet {ref}: " + self.unknown("pdu", pdu_name)
                if index is None:
                    self._removed_part(None, "outlets", message, item)
                else:
                    self.at(item, loc, message)
            elif int(number) not in pdu.form["outlets"]:
                if index is None:
                    message = f"outlet {number} is removed, but {self.describe(item)} uses it"
                    self._removed_part(pdu, "outlets", message, item)
                else:
                    self.at(item, loc, f"pdu {pdu_name} has no outlet {number}")
            elif ref in used:
                self.at(item, loc, f"outlet {ref} is already used by {self.describe(used[ref])}")
            else:
                used[ref] = item

    def bmcs(self) -> None:
        for item in self.items["machine"].values():
            given = item.entry.given.get("bmc") if item.entry else None
            if not isinstance(given, dict):
                continue
            credential_set = given.get("credential_set")
            if credential_set is not None and credential_set not in self.current.credential_sets:
                known = ", ".join(sorted(self.current.credential_sets)) or "none exist yet"
                message = f"no credential set named {credential_set!r} (known: {known})"
                self.at(item, ("bmc", "credential_set"), message)
            var = given.get("password_env")
            if var is not None and not self.env.get(var):
                state = "is empty" if var in self.env else "is not set"
                message = f"environment variable {var} {state} where the file was applied from"
                self.at(item, ("bmc", "password_env"), message)

    def pdus(self) -> None:
        for item in self.items["pdu"].values():
            if item.entry is not None:
                given = item.entry.given
                for key, message in pdu_settings.problems(item.form, given, self.env):
                    self.at(item, (key,) if key in given else (), message)


def prune_problems(current: Current, names: list[str], now: datetime) -> list[Problem]:
    """Problems for machines that --prune would delete but must not."""
    problems: list[Problem] = []
    for name in names:
        row = current.machines[name]
        where = f"machine {name} (not in this file)"
        if row.state not in PRUNABLE:
            problems.append(
                Problem(
                    where,
                    f"--prune cannot delete machine {name}: it is {row.state}; "
                    "only machines at rest and not in use are deleted "
                    "(release or retire it first, or add it to the file)",
                )
            )
        elif row.lock_owner and row.lock_expires and row.lock_expires > now:
            problems.append(
                Problem(where, f"--prune cannot delete machine {name}: {row.lock_owner} holds it")
            )
    return problems
