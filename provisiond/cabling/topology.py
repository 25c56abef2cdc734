"""The planned cabling as a PTM ``topology.dot``: export, and import in one transaction.

One edge per wired NIC, switch side first, as Cumulus PTM reads it::

    graph G {
      "lab1-sw1":"swp1" -- "vm1":"eth0";
    }

A NIC is named by its name, or by its MAC when it has none (or shares it). Import
takes the same form, either side first; a line between two switches (a fabric link
in a PTM file) is skipped and said so. Every bad line is a problem with its number
and a hint (the closest names), and nothing is written unless every line is good.
Each NIC of the file gets the port the file names; a NIC the file does not name
keeps its port, unless the file gives that port to another NIC (then it is unwired).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from provisiond.cabling.lldp import as_mac
from provisiond.cabling.load import fabric
from provisiond.errors import BadRequest, Problem, ValidationFailed
from provisiond.events import audit
from provisiond.inventory.state import natural
from provisiond.models import Machine, Nic
from provisiond.schemas.cabling import TopologyImportOut

MAX_BYTES = 1024 * 1024
MAX_LINES = 100_000
HINT = 'one edge a line, e.g. "lab1-sw1":"swp1" -- "vm1":"eth0"; (the NIC by name or MAC)'
_ID = r'"((?:[^"\\]|\\.)*)"|([A-Za-z0-9_.\-]+)'
_END = rf"(?:{_ID})\s*:\s*(?:{_ID})"
_EDGE = re.compile(rf"^\s*{_END}\s*--\s*{_END}\s*(?:\[[^\]]*\])?\s*;?\s*$")
_HEAD = re.compile(r'^\s*(?:strict\s+)?graph\s*(?:"[^"]*"|[A-Za-z0-9_]+)?\s*\{\s*$', re.I)
_COMMENT = re.compile(r"^\s*(?://|#|/\*.*\*/\s*$)")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(quoted: str | None, bare: str | None) -> str:
    if quoted is not None:
        return re.sub(r"\\(.)", r"\1", quoted)
    return bare or ""


def export(session: Session) -> str:
    """Every wired NIC as a PTM edge, by switch and port (natural order)."""
    net = fabric(session)
    rows = session.execute(
        select(col(Machine.name), col(Nic.name), col(Nic.mac), col(Nic.switch_port_id))
        .join(Machine, col(Machine.id) == col(Nic.machine_id))
        .order_by(col(Machine.name), col(Nic.id))
    ).all()
    named: dict[tuple[str, str], int] = {}
    for machine, name, _, _ in rows:
        named[(machine, name)] = named.get((machine, name), 0) + 1
    edges = []
    for machine, name, mac, port_id in rows:
        if port_id is None:
            continue
        switch, port = net.port_ref[port_id]
        nic = name if name and named[(machine, name)] == 1 else mac
        edges.append((natural(switch), natural(port), switch, port, machine, nic))
    lines = [
        f"  {_quote(s)}:{_quote(p)} -- {_quote(m)}:{_quote(n)};" for *_, s, p, m, n in sorted(edges)
    ]
    header = "// planned cabling from provisiond; apply with 'provisiond cabling import FILE'\n"
    return header + "graph G {\n" + "".join(line + "\n" for line in lines) + "}\n"


@dataclass(frozen=True)
class _Edge:
    line: int
    switch: str
    port: str
    machine: str
    nic: str


#: A file stops being checked after this many problems (each costs a fuzzy name search).
MAX_PROBLEMS = 50


def _stopped(problems: Sequence[Problem]) -> str:
    if len(problems) < MAX_PROBLEMS:
        return ""
    return f" (checking stopped at {MAX_PROBLEMS} problems: fix these and import again)"


def _close(word: str, names: Sequence[str], what: str) -> str:
    near = difflib.get_close_matches(word, list(names), n=3)
    return f"did you mean {', '.join(near)}?" if near else f"no {what} has a similar name"


def parse(text: str) -> list[tuple[int, str, str, str, str]]:
    """The edges of ``text`` as (line, node, port, node, port); a 422 for lines that
    are not edges, the graph's head or its closing brace."""
    problems: list[Problem] = []
    edges = []
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise BadRequest(
            f"the file has {len(lines)} lines; at most {MAX_LINES} are taken",
            hint="split it by rack",
        )
    for number, line in enumerate(lines, 1):
        if not line.strip() or _COMMENT.match(line) or _HEAD.match(line) or line.strip() == "}":
            continue
        match = _EDGE.match(line)
        if match is None:
            why = "not an edge"
            if "->" in line or "digraph" in line:
                why = "a directed graph or edge; PTM topologies are 'graph G {' with -- edges"
            problems.append(Problem(f"line {number}", f"{why}: {line.strip()[:120]}", number))
            if len(problems) >= MAX_PROBLEMS:
                break
            continue
        g = match.groups()
        edges.append(
            (
                number,
                _unquote(g[0], g[1]),
                _unquote(g[2], g[3]),
                _unquote(g[4], g[5]),
                _unquote(g[6], g[7]),
            )
        )
    if problems:
        raise ValidationFailed(problems, hint=HINT + _stopped(problems))
    return edges


def import_dot(
    session: Session, text: str, *, actor: str, request_id: str = ""
) -> tuple[TopologyImportOut, list[int]]:
    """Apply the planned cabling of ``text``; returns what changed and the ids of the
    machines whose NICs changed (for a new check)."""
    net = fabric(session)
    rows = session.exec(
        select(Nic, Machine).join(Machine, col(Machine.id) == col(Nic.machine_id))
    ).all()
    machines = {m.name for _, m in rows}
    by_key: dict[tuple[str, str], list[Nic]] = {}
    keys_of: dict[str, set[str]] = {}
    for nic, machine in rows:
        for key in {nic.name, nic.mac}:
            if key:
                by_key.setdefault((machine.name, key), []).append(nic)
                keys_of.setdefault(machine.name, set()).add(key)
    problems: list[Problem] = []
    wanted: dict[int, tuple[_Edge, int]] = {}
    port_of: dict[int, _Edge] = {}
    skipped: list[str] = []
    for number, a, pa, b, pb in parse(text):
        if len(problems) >= MAX_PROBLEMS:
            break
        where = f"line {number}"
        if a not in net.switches and b in net.switches:
            a, pa, b, pb = b, pb, a, pa
        if a in net.switches and b in net.switches:
            skipped.append(f"line {number}: {a}:{pa} -- {b}:{pb} (a link between switches)")
            continue
        if a not in net.switches:
            near = _close(a, list(net.switches), "switch")
            problems.append(Problem(where, f"neither {a!r} nor {b!r} is a switch ({near})", number))
            continue
        if pa not in net.switches[a].ports:
            near = _close(pa, list(net.switches[a].ports), "port")
            problems.append(Problem(where, f"switch {a} has no port {pa!r} ({near})", number))
            continue
        if b not in machines:
            near = _close(b, sorted(machines), "machine")
            problems.append(Problem(where, f"no machine named {b!r} ({near})", number))
            continue
        found = by_key.get((b, pb)) or by_key.get((b, as_mac(pb) or pb), [])
        if len(found) != 1:
            nic_names = sorted(keys_of.get(b, ()))
            why = (
                "has two NICs of that name; name it by MAC"
                if found
                else (f"has no NIC {pb!r} ({_close(pb, nic_names, 'NIC')})")
            )
            problems.append(Problem(where, f"machine {b} {why}", number))
            continue
        edge, nic = _Edge(number, a, pa, b, pb), found[0]
        port_id = net.port_id[(a, pa)]
        if port_id in port_of:
            problems.append(
                Problem(
                    where, f"port {a}/{pa} is also given on line {port_of[port_id].line}", number
                )
            )
            continue
        if nic.id in wanted:
            problems.append(
                Problem(
                    where, f"{b} {pb} is also wired on line {wanted[nic.id or 0][0].line}", number
                )
            )
            continue
        port_of[port_id] = edge
        wanted[nic.id or 0] = (edge, port_id)
    if problems:
        raise ValidationFailed(
            problems, hint=HINT + "; names are those of the inventory" + _stopped(problems)
        )
    return _apply(session, rows, wanted, port_of, skipped, net.port_ref, actor, request_id)


def _apply(
    session: Session,
    rows: Sequence[tuple[Nic, Machine]],
    wanted: dict[int, tuple[_Edge, int]],
    port_of: dict[int, _Edge],
    skipped: list[str],
    port_ref: dict[int, tuple[str, str]],
    actor: str,
    request_id: str,
) -> tuple[TopologyImportOut, list[int]]:
    def ref(port_id: int | None) -> str:
        return "/".join(port_ref[port_id]) if port_id is not None else "(none)"

    changed, unwired, touched = [], [], set()
    moving: list[tuple[Nic, int | None]] = []
    for nic, machine in rows:
        label = f"{machine.name} {nic.name or nic.mac}"
        if nic.id in wanted:
            target: int | None = wanted[nic.id or 0][1]
            if target != nic.switch_port_id:
                changed.append(f"{label}: {ref(nic.switch_port_id)} -> {ref(target)}")
                moving.append((nic, target))
        elif nic.switch_port_id in port_of:
            unwired.append(f"{label}: {ref(nic.switch_port_id)} -> (none)")
            moving.append((nic, None))
    for nic, _ in moving:  # free every port first: a port is wired to one NIC at a time
        nic.switch_port_id = None
        touched.add(nic.machine_id)
        session.add(nic)
    session.flush()
    for nic, target in moving:
        nic.switch_port_id = target
        session.add(nic)
    session.flush()
    unchanged = len(wanted) - len(changed)
    if moving:
        audit(
            session,
            "cabling_import",
            f"topology.dot import: {len(changed)} NICs rewired, {len(unwired)} unwired, "
            f"{unchanged} unchanged",
            actor=actor,
            request_id=request_id,
            details={"changed": changed[:100], "unwired": unwired[:100]},
        )
    out = TopologyImportOut(changed=changed, unchanged=unchanged, unwired=unwired, skipped=skipped)
    return out, sorted(touched)
