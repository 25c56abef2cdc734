"""Inventory as code: plan, apply and export racks, switches, PDUs and machines as YAML.

The file (``inventory/README.md`` has the full reference)::

    version: 1                      # optional; the only version is 1
    racks:
      - {name: r1, site: dc1, u_height: 42, power_budget_watts: 8000}
    switches:
      - name: sw1
        rack: r1
        u_position: 42              # U1 is the bottom
        ports: [swp1, {name: swp2, vlan: 100}]
    pdus:
      - {name: pdu1, rack: r1, capacity_watts: 10000, outlets: 24,   # or a list: [1, 2, 5]
         mgmt_address: 10.0.0.5, driver: apc_snmp, snmp_version: "2c",
         snmp_community_env: PDU_COMMUNITY}
    machines:
      - name: node1
        rack: r1
        u_position: 1
        u_height: 1
        tags: [ci]
        nics:
          - {mac: "52:54:00:00:00:01", name: eth0, pxe: true, switch_port: sw1/swp1}
        bmc: {driver: ipmi, address: 127.0.0.1, port: 16001, username: admin,
              password_env: NODE_BMC_PASSWORD}   # or password:, or credential_set: NAME
        outlets: [pdu1/1]

Names are the identity: an entry whose name is in the database updates that
object, any other creates one. A key left out keeps the stored value (a new object
gets the default); a key given, ``null`` included, replaces it. Lists of parts
(``ports``, ``outlets``, ``nics``) are whole when given. Unknown keys, wrong types
and negative numbers are problems, as are rack overlaps, duplicate MACs, unknown
references and ports or outlets used twice. Every problem carries its path and
line, all are reported at once, and nothing is written while any remains.

BMC passwords are stored encrypted and never shown: not in the plan, not in errors,
not in an export. A BMC without ``password``/``password_env`` keeps its stored
password, which is why an export re-applies as "unchanged". ``password_env`` names
a variable of the *client's* environment; the CLI sends the variables a file names
(JSON body ``{"yaml": ..., "env": {...}}``), since the daemon may run elsewhere.
A PDU's SNMP secrets (``snmp_community``, ``snmp_auth_key``, ``snmp_priv_key``, or
each as ``<key>_env: NAME``) are handled the same way (:mod:`.pdu_settings`).

Nothing is deleted without ``prune``: then racks, switches, PDUs and machines that
the file does not name are deleted, machines only when at rest and not active.

    >>> plan(session, Source(text), secrets=box)               # what would change
    >>> apply(session, Source(text), secrets=box, actor="token:ops",
    ...       hosts_changed=services.hosts_changed, prune=True)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Session

from provisiond.db import after_commit
from provisiond.errors import (
    BadRequest,
    Problem,
    ProvisiondError,
    ValidationFailed,
)
from provisiond.inventory import MAX_BYTES as MAX_BYTES  # where admission reads it
from provisiond.inventory import write as inventory_write
from provisiond.inventory.check import Checker, Item, prune_problems
from provisiond.inventory.gcpause import paused
from provisiond.inventory.pdu_settings import secret_change
from provisiond.inventory.spec import Document, parse
from provisiond.inventory.state import (
    HIDDEN,
    KINDS,
    SECTION,
    Current,
    diff,
    load_current,
    merge,
    natural,
)
from provisiond.inventory.yamlfile import Flow, FlowList, dump
from provisiond.models import utcnow
from provisiond.secrets import SecretBox

_APPLY_LOCK = 0x70766E76  # any constant; shared by every daemon on the database
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
Action = Literal["create", "update", "unchanged", "delete"]
ACTIONS: tuple[Action, ...] = ("create", "update", "unchanged", "delete")


@dataclass(frozen=True)
class Source:
    """An inventory file and the environment variables its ``password_env`` keys name."""

    text: str
    env: dict[str, str] = field(default_factory=dict)


class Change(BaseModel):
    action: Action
    kind: str
    name: str
    #: The entry's line in the file; None for deletions.
    line: int | None = None
    #: Changed fields: ``{"u_position": {"from": 1, "to": 3}}``; parts by key: ``nics[<mac>]``.
    fields: dict[str, dict[str, Any]] = {}


class Plan(BaseModel):
    changes: list[Change]
    summary: dict[str, int]
    applied: bool = False


def read_source(body: bytes, content_type: str) -> Source:
    """The request body as a :class:`Source`: raw YAML, or JSON ``{"yaml": ..., "env": {...}}``.
    Its size is already bounded by :data:`MAX_BYTES` (admission answers 413 first)."""
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the body is not UTF-8 (byte {exc.start})", hint="save the file as UTF-8"
        ) from None
    if media in ("", *YAML_TYPES):
        return Source(text)
    if media != "application/json":
        raise BadRequest(
            f"unsupported content type {media!r}",
            hint='send the YAML as application/yaml, or JSON {"yaml": "...", "env": {}}',
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the JSON body does not parse: {exc}", hint="check the JSON") from None
    except RecursionError:  # "[" x 100,000
        raise BadRequest(
            "the JSON body is nested too deeply to parse", hint="check the JSON"
        ) from None
    env = data.get("env", {}) if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("yaml"), str)
        or not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        or set(data) - {"yaml", "env"}
    ):
        raise BadRequest(
            "the JSON body must be {'yaml': '<text>', 'env': {'NAME': 'value'}}",
            hint="or send the YAML itself as application/yaml",
        )
    return Source(data["yaml"], env)


@dataclass
class Draft:
    """A checked plan and everything needed to carry it out."""

    doc: Document
    current: Current
    #: kind -> name -> the form the file asks for
    desired: dict[str, dict[str, dict[str, Any]]]
    #: machine name -> the clear BMC password to store (only when it changes)
    passwords: dict[str, str]
    deletes: dict[str, list[str]]
    plan: Plan
    #: PDU name -> the clear JSON of its SNMP secrets to store (only when they change)
    pdu_secrets: dict[str, str] = field(default_factory=dict)


def _password(item: Item, current: Current, env: dict[str, str], secrets: SecretBox) -> str | None:
    """The clear password to store for this machine, or None to keep what is stored."""
    bmc = item.entry.given.get("bmc") if item.entry else None
    if not isinstance(bmc, dict) or item.form["bmc"] is None:
        return None
    clear = bmc.get("password") or env.get(bmc.get("password_env") or "")
    stored = current.secrets.get(item.name)
    if not clear:
        return None
    if stored is not None:
        try:
            if secrets.decrypt(stored) == clear:
                return None
        except ProvisiondError:
            pass  # an undecryptable secret is replaced
    return str(clear)


def draft(
    session: Session, source: Source, *, secrets: SecretBox, prune: bool, brief: bool = False
) -> Draft:
    """Parse, merge and check; raises ValidationFailed listing every problem. ``brief``
    leaves out the fields of what is created (all of them, from nothing): what the CLI's
    table shows, and a tenth of the JSON when a whole inventory is new."""
    doc, problems = parse(source.text)
    if problems and not doc.entries:
        raise _rejected(problems)
    current = load_current(session)
    named = {kind: {e.name for e in doc.of(kind)} | doc.invalid[kind] for kind in KINDS}
    deletes = {
        kind: sorted((n for n in current.forms[kind] if n not in named[kind]), key=natural)
        if prune
        else []
        for kind in KINDS
    }
    items: dict[str, dict[str, Item]] = {}
    for kind in KINDS:
        gone = named[kind] | set(deletes[kind])
        items[kind] = {
            n: Item(kind, n, form) for n, form in current.forms[kind].items() if n not in gone
        }
        for entry in doc.of(kind):
            want = merge(entry, current.forms[kind].get(entry.name))
            items[kind][entry.name] = Item(kind, entry.name, want, entry)
    problems += Checker(doc, current, items, prune, source.env).run()
    problems += prune_problems(current, deletes["machine"], utcnow())
    if problems:
        raise _rejected(problems)

    changes: list[Change] = []
    passwords: dict[str, str] = {}
    pdu_secrets: dict[str, str] = {}
    desired: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for entry in doc.of(kind):
            item = items[kind][entry.name]
            old = current.forms[kind].get(entry.name)
            shown = not (brief and old is None)
            fields = diff(kind, old, item.form) if shown else {}
            clear = _password(item, current, source.env, secrets) if kind == "machine" else None
            if clear is not None:
                passwords[entry.name] = clear
                was = HIDDEN if entry.name in current.secrets else None
                if shown:
                    fields["bmc.password"] = {"from": was, "to": "(new, hidden)"}
            if kind == "pdu":
                token = current.pdu_secrets.get(entry.name)
                new, keys = secret_change(entry.given, token, source.env, secrets)
                if new is not None:
                    pdu_secrets[entry.name] = new
                for key, had in keys.items():
                    if shown:
                        fields[key] = {"from": HIDDEN if had else None, "to": "(new, hidden)"}
            action: Action = "create" if old is None else "update" if fields else "unchanged"
            desired[kind][entry.name] = item.form
            # Built from checked data: model_construct skips validating 10,000 of them again.
            changes.append(
                Change.model_construct(
                    action=action, kind=kind, name=entry.name, line=entry.line, fields=fields
                )
            )
    for kind in reversed(KINDS):
        changes += [Change(action="delete", kind=kind, name=n) for n in deletes[kind]]
    summary = {a: sum(1 for c in changes if c.action == a) for a in ACTIONS}
    plan = Plan(changes=changes, summary=summary)
    return Draft(doc, current, desired, passwords, deletes, plan, pdu_secrets)


def _rejected(problems: list[Problem]) -> ValidationFailed:
    unique = list(dict.fromkeys(problems))
    unique.sort(key=lambda p: (p.line is None, p.line or 0, p.path))
    return ValidationFailed(
        unique,
        hint="fix every problem listed (lines are the file's); nothing was written",
    )


def plan(
    session: Session,
    source: Source,
    *,
    secrets: SecretBox,
    prune: bool = False,
    brief: bool = False,
) -> Plan:
    """What applying ``source`` would change; writes nothing."""
    with paused():
        return draft(session, source, secrets=secrets, prune=prune, brief=brief).plan


def apply(
    session: Session,
    source: Source,
    *,
    secrets: SecretBox,
    actor: str,
    hosts_changed: Callable[..., None],
    prune: bool = False,
    brief: bool = False,
) -> Plan:
    """Check and apply ``source`` in the caller's transaction; once it commits, the
    touched machines' dnsmasq host files are rewritten through ``hosts_changed``."""
    if session.get_bind().dialect.name == "postgresql":
        # Two applies at once would each check against a state the other is changing.
        # SQLite needs nothing: its write transactions already take the lock up front.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPLY_LOCK})
    else:
        session.connection()  # SQLite's BEGIN IMMEDIATE: wait for the write slot here
    # Not before: the collector stays paused only while this apply works, not waits.
    with paused():
        ready = draft(session, source, secrets=secrets, prune=prune, brief=brief)
        inventory_write.write(session, ready, secrets=secrets, actor=actor)
    touched = [c for c in ready.plan.changes if c.kind == "machine" and c.action != "unchanged"]
    changed = [c.name for c in touched if c.action != "delete"]
    removed = [c.name for c in touched if c.action == "delete"]
    if touched:
        after_commit(session, lambda: hosts_changed(changed, removed=removed))
    return ready.plan.model_copy(update={"applied": True})


HEADER = (
    "# provisiond inventory (apply: provisiond inventory apply FILE [--dry-run] [--prune]).\n"
    "# BMC passwords and PDU SNMP secrets are never exported; without one in the file,\n"
    "# a BMC or PDU keeps what is stored.\n"
)


def _outlets(numbers: list[int]) -> int | FlowList:
    return (
        len(numbers)
        if numbers and numbers == list(range(1, len(numbers) + 1))
        else FlowList(numbers)
    )


def _render(kind: str, form: dict[str, Any]) -> dict[str, Any]:
    out = dict(form)
    if kind == "switch":
        out["ports"] = [Flow(p) for p in form["ports"]]
    elif kind == "pdu":
        out["outlets"] = _outlets(form["outlets"])
    elif kind == "machine":
        out["nics"] = [Flow(n) for n in form["nics"]]
        out["bmc"] = Flow(form["bmc"]) if form["bmc"] is not None else None
        for key in ("tags", "disks", "outlets"):
            out[key] = FlowList(form[key])
    return out


def export(session: Session) -> str:
    """The whole inventory in the apply format; applying it back changes nothing."""
    with paused():
        return _export(load_current(session).forms)


def _export(forms: dict[str, dict[str, dict[str, Any]]]) -> str:
    document: dict[str, Any] = {"version": 1}
    for kind in KINDS:
        names = sorted(forms[kind], key=natural)
        document[SECTION[kind]] = [_render(kind, forms[kind][n]) for n in names]
    return dump(document, HEADER)
