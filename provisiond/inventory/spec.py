"""The inventory file's schema, and the first pass over a file: types, ranges, unknown keys.

Every entry is checked on its own, so one bad machine does not hide the problems of
the next; each problem carries the path (``machines[2].nics[0].mac``) and line.
The references between entries, rack placement and uniqueness are checked later
against the database (:mod:`provisiond.inventory.check`).

Keys that an entry leaves out mean "keep what is stored" (see :mod:`inventory`),
so :attr:`Entry.given` holds only the keys the file wrote.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from provisiond.drivers.power.redfish_tls import canonical_fingerprint
from provisiond.errors import Problem
from provisiond.inventory.gcpause import paused
from provisiond.inventory.yamlfile import (
    FILE,
    LineDict,
    LineList,
    format_path,
    line_at,
    load,
    plain,
)
from provisiond.inventory.yamlscan import ENV_PATTERN
from provisiond.inventory.yamlscan import env_names as env_names  # its old home
from provisiond.schemas.base import Name
from provisiond.schemas.disks import Disk, Hints
from provisiond.validators import normalize_mac

Loc = tuple[str | int, ...]

# Bounded so that no value can overflow a PostgreSQL INTEGER or VARCHAR column (a 500).
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Position = Annotated[int, Field(ge=1, le=60)]


Text32 = Annotated[str, StringConstraints(max_length=32)]
Text64 = Annotated[str, StringConstraints(max_length=64)]
Text128 = Annotated[str, StringConstraints(max_length=128)]
Text255 = Annotated[str, StringConstraints(max_length=255)]
Text16 = Annotated[str, StringConstraints(max_length=16)]
Word64 = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Community = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SnmpKey = Annotated[str, StringConstraints(min_length=8, max_length=256)]
#: Keys whose values are never echoed in a problem (a secret may sit there).
_SECRET_KEYS = frozenset({"bmc", "snmp_community", "snmp_auth_key", "snmp_priv_key"})


Mac = Annotated[str, AfterValidator(normalize_mac)]
#: A MAC, or "" for none (a switch's chassis MAC).
OptionalMac = Annotated[
    str, StringConstraints(max_length=32), AfterValidator(lambda v: normalize_mac(v) if v else "")
]
#: A certificate fingerprint in any usual spelling, kept as ``sha256:AB:CD:..``.
Pin = Annotated[str, StringConstraints(max_length=128), AfterValidator(canonical_fingerprint)]
_PORT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/.+$"
_OUTLET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[1-9][0-9]{0,3}$"
PortRef = Annotated[str, StringConstraints(max_length=130, pattern=_PORT_PATTERN)]
OutletRef = Annotated[str, StringConstraints(max_length=80, pattern=_OUTLET_PATTERN)]
EnvName = Annotated[str, StringConstraints(max_length=128, pattern=ENV_PATTERN)]


_PATTERNS = {
    str(get_args(Name)[1].pattern): (
        "a name of letters, digits, '.', '_' and '-' (names use no spaces or slashes)"
    ),
    _PORT_PATTERN: "SWITCH/PORT, e.g. sw1/swp1",
    _OUTLET_PATTERN: "PDU/N with N from 1, e.g. pdu1/3",
    ENV_PATTERN: "an environment variable name, e.g. BMC_PASSWORD",
}


class Spec(BaseModel):
    # strict: "3" is not 3 and 1.0 is not 1; a typo in a value must not be coerced away.
    model_config = ConfigDict(extra="forbid", strict=True)


class RackSpec(Spec):
    name: Name
    site: Text64 = ""
    u_height: Position = 42
    power_budget_watts: Count | None = None


class PortSpec(Spec):
    name: Word64
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None
    description: Text255 = ""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data  # "swp1" = {name: swp1}


class SwitchSpec(Spec):
    name: Name
    rack: Name | None = None
    u_position: Position | None = None
    u_height: Position = 1
    vendor: Text64 = ""
    model: Text64 = ""
    mgmt_address: Text255 = ""
    #: The chassis MAC the switch sends as its LLDP chassis id (the cabling check).
    chassis_mac: OptionalMac = ""
    ports: list[PortSpec] = []


class PduSpec(Spec):
    name: Name
    rack: Name | None = None
    u_position: Position | None = None
    u_height: Annotated[int, Field(ge=0, le=60)] = 0
    capacity_watts: Count | None = None
    mgmt_address: Text255 = ""
    #: The driver settings (provisiond.inventory.pdu_settings); driver "" = only recorded.
    driver: Text32 = ""
    snmp_port: Annotated[int, Field(ge=1, le=65535)] = 161
    snmp_version: Literal["2c", "3"] = "2c"
    snmp_username: Text64 = ""
    snmp_auth_protocol: Literal["", "sha", "sha256"] = ""
    snmp_priv_protocol: Literal["", "aes128", "aes256"] = ""
    outlets: list[Annotated[int, Field(ge=1, le=9999)]] = []
    # Write-only, as a BMC's password: each in clear or as <key>_env; leaving both out
    # keeps the stored one.
    snmp_community: Community | None = None
    snmp_community_env: EnvName | None = None
    snmp_auth_key: SnmpKey | None = None
    snmp_auth_key_env: EnvName | None = None
    snmp_priv_key: SnmpKey | None = None
    snmp_priv_key_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_each(self) -> PduSpec:
        for key in ("snmp_community", "snmp_auth_key", "snmp_priv_key"):
            if getattr(self, key) is not None and getattr(self, f"{key}_env") is not None:
                raise ValueError(f"give {key} or {key}_env, not both")
        return self

    @model_validator(mode="before")
    @classmethod
    def _count(cls, data: Any) -> Any:
        # "outlets: 24" means outlets 1 to 24.
        if isinstance(data, dict) and type(data.get("outlets")) is int:
            count = data["outlets"]
            if 0 <= count <= 9999:
                return {**data, "outlets": list(range(1, count + 1))}
        return data


class NicSpec(Spec):
    mac: Mac
    name: Text32 = ""
    pxe: bool = False
    ip_address: Text64 = ""
    switch_port: PortRef | None = None


class BmcSpec(Spec):
    driver: Literal["ipmi", "redfish", "manual"] = "ipmi"
    address: Text255 = ""
    #: Left out: 623 for IPMI, 443 for Redfish (see inventory_state.merge).
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    username: Text64 = ""
    credential_set: Name | None = None
    # A Redfish BMC's certificate pin is not a secret: it is planned, shown and exported.
    cert_fingerprint: Pin = ""
    tls_verify: Literal["fingerprint", "system"] = "fingerprint"
    # Never stored in clear and never exported; leaving both out keeps the stored password.
    password: Secret | None = None
    password_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BmcSpec:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        return self


class MachineSpec(Spec):
    name: Name
    rack: Name | None = None
    u_position: Position | None = None
    u_height: Position = 1
    serial: Text128 = ""
    vendor: Text128 = ""
    model: Text128 = ""
    arch: Text16 = "x86_64"
    cpus: Count | None = None
    ram_mib: Count | None = None
    power_watts: Count | None = None
    tags: list[Word64] = []
    disks: list[Disk] = []
    root_device: Hints = {}
    nics: list[NicSpec] = []
    bmc: BmcSpec | None = None
    outlets: list[OutletRef] = []


#: Fields whose values may hold anything (``dict[str, Any]``): the file's mappings and
#: lists pass validation as they are, so only these are copied to plain dicts and lists.
_ANY_VALUES = frozenset({"disks", "root_device"})

SECTIONS: dict[str, tuple[str, type[Spec]]] = {
    "racks": ("rack", RackSpec),
    "switches": ("switch", SwitchSpec),
    "pdus": ("pdu", PduSpec),
    "machines": ("machine", MachineSpec),
}
TOP_KEYS = ("version", *SECTIONS)
_ALL_KEYS = sorted(
    {*TOP_KEYS}
    | {
        name
        for spec in (RackSpec, PortSpec, SwitchSpec, PduSpec, NicSpec, BmcSpec, MachineSpec)
        for name in spec.model_fields
    }
)


@dataclass
class Entry:
    """One rack, switch, PDU or machine as the file wrote it."""

    kind: str
    name: str
    spec: Any
    given: dict[str, Any]
    loc: Loc
    line: int | None


@dataclass
class Document:
    tree: Any = None
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    #: Names of entries that failed the schema, so references to them are not also reported.
    invalid: dict[str, set[str]] = field(default_factory=dict)

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(format_path(loc), message, line_at(self.tree, loc))

    def of(self, kind: str) -> list[Entry]:
        return self.entries.get(kind, [])


def did_you_mean(key: object, known: tuple[str, ...] | list[str] = _ALL_KEYS) -> str:
    others = [k for k in known if k != key]
    close = difflib.get_close_matches(str(key), others, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: Any) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}{did_you_mean(loc[-1])}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    # Values under bmc are never echoed: a password may sit where a mapping was expected;
    # nor are a PDU's SNMP secrets.
    got = "" if _SECRET_KEYS.intersection(map(str, loc)) else f" (got {_shown(value)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping{got}"
    if kind == "list_type":
        return f"expected a list{got}"
    if kind == "string_pattern_mismatch":
        expected = _PATTERNS.get(error.get("ctx", {}).get("pattern", ""), "a different form")
        return f"expected {expected}{got}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind != "value_error" and isinstance(value, str | int | float | bool):
        message += got
    return message


def _nul_strings(node: Any, loc: Loc, doc: Document, problems: list[Problem]) -> None:
    # PostgreSQL cannot store NUL in text; refuse it here, with its line, not as a 500.
    if isinstance(node, str) and "\x00" in node:
        problems.append(doc.problem(loc, "contains a NUL character"))
    elif isinstance(node, dict):
        for key, value in node.items():
            _nul_strings(key, (*loc, str(key)), doc, problems)
            _nul_strings(value, (*loc, str(key)), doc, problems)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _nul_strings(value, (*loc, index), doc, problems)


def _section(doc: Document, key: str, items: Any, problems: list[Problem]) -> None:
    kind, spec_type = SECTIONS[key]
    doc.entries[kind], doc.invalid[kind] = [], set()
    if items is None:
        return
    if not isinstance(items, LineList):
        problems.append(doc.problem((key,), f"expected a list of {key} (got {items!r})"))
        return
    first: dict[str, int | None] = {}
    for index, item in enumerate(items):
        loc: Loc = (key, index)
        try:
            spec = spec_type.model_validate(item)
        except ValidationError as exc:
            problems.extend(doc.problem((*loc, *e["loc"]), _message(e)) for e in exc.errors())
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                doc.invalid[kind].add(item["name"])
            continue
        name: str = getattr(spec, "name")  # noqa: B009  (every section's spec has a name)
        line = line_at(doc.tree, loc)
        if name in first:
            where = f"line {first[name]}" if first[name] else "above"
            problems.append(doc.problem((*loc, "name"), f"{kind} {name} is already at {where}"))
            continue
        first[name] = line
        given = spec.model_dump(exclude_unset=True)
        for key in _ANY_VALUES.intersection(given):
            given[key] = plain(given[key])  # LineDict/LineList values pass validation as they are
        doc.entries[kind].append(Entry(kind, name, spec, given, loc, line))


def validate(tree: Any, *, nul_check: bool = True) -> tuple[Document, list[Problem]]:
    doc = Document(tree=tree)
    problems: list[Problem] = []
    if tree is None:
        problems.append(
            Problem(FILE, "the document is empty; write at least one of: racks, switches, pdus")
        )
        return doc, problems
    if not isinstance(tree, LineDict):
        message = f"the top level must be a mapping with the keys {', '.join(TOP_KEYS)}"
        return doc, [Problem(FILE, message, getattr(tree, "line", 1))]
    if nul_check:
        _nul_strings(tree, (), doc, problems)
    for key in tree:
        if key not in TOP_KEYS:
            problems.append(
                doc.problem((str(key),), f"unknown key {key!r}{did_you_mean(key, TOP_KEYS)}")
            )
    if "version" in tree and (type(tree["version"]) is not int or tree["version"] != 1):
        problems.append(doc.problem(("version",), f"unknown version {tree['version']!r}; use 1"))
    for key in SECTIONS:
        _section(doc, key, tree.get(key), problems)
    return doc, problems


def parse(text: str) -> tuple[Document, list[Problem]]:
    """YAML text to a checked :class:`Document`, with every problem found on the way."""
    with paused():
        tree, problems = load(text)
        if problems:
            return Document(tree=tree), problems
        # A NUL can only come from an escape (\0, \x00, \u0000) in a double-quoted
        # scalar: YAML refuses the character itself. No backslash, no walk.
        doc, more = validate(tree, nul_check="\\" in text)
        return doc, problems + more
