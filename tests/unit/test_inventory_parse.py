"""Inventory YAML without a database: line tracking, the schema's problems, merge and diff."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from provisiond.inventory import spec as inventory_spec
from provisiond.inventory import state as inventory_state
from provisiond.inventory import yamlfile as inventory_yaml
from provisiond.inventory.spec import env_names, parse
from provisiond.inventory.yamlfile import Flow, FlowList, dump, format_path, line_at, load


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    _, problems = parse(textwrap.dedent(text))
    return [(p.line, p.path, p.message) for p in problems]


def _one(text: str) -> tuple[int | None, str, str]:
    problems = _problems(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- the loader ---------------------------------------------------------------------


def test_lines_of_mappings_keys_and_items() -> None:
    tree, problems = load(
        textwrap.dedent(
            """\
            racks:
              - name: r1

              - name: r2
                site: dc1
            machines:
              - {name: n1, tags: [a, b]}
            """
        )
    )
    assert problems == []
    assert tree["racks"].item_lines == [2, 4]
    assert tree["racks"][1].line == 4
    assert tree["racks"][1].key_lines == {"name": 4, "site": 5}
    assert line_at(tree, ("racks", 1, "site")) == 5
    assert line_at(tree, ("machines", 0, "tags", 1)) == 7
    # A key that is not there resolves to the deepest part that is: its entry.
    assert line_at(tree, ("racks", 1, "u_height")) == 4
    assert line_at(tree, ("nope",)) == 1


def test_unquoted_macs_and_dates_stay_strings() -> None:
    tree, _ = load("a: 52:54:00:12:34:56\nb: 2024-01-01\nc: 1:30\nd: 12\ne: 1.5\n")
    assert tree == {"a": "52:54:00:12:34:56", "b": "2024-01-01", "c": "1:30", "d": 12, "e": 1.5}
    assert tree.__class__ is inventory_yaml.LineDict
    assert load("f: 0x10")[0] == {"f": 16}


def test_duplicate_keys_are_problems_but_merge_overrides_are_not() -> None:
    text = textwrap.dedent(
        """\
        base: &base {u_height: 1, arch: x86_64}
        machines:
          - <<: *base
            name: n1
            u_height: 2
            name: n2
        """
    )
    tree, problems = load(text)
    assert [(p.line, p.path, p.message) for p in problems] == [
        (6, "machines[0].name", "key 'name' is given twice in one mapping")
    ]
    assert tree["machines"][0] == {"u_height": 2, "arch": "x86_64", "name": "n2"}
    assert tree["machines"][0].key_lines["u_height"] == 5


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("racks:\n  - name: r1\n   bad: indent\n", 3, "YAML syntax error"),
        ("racks: [a, b\nmachines: []\n", 2, "flow sequence"),
        ("a: 1\n---\nb: 2\n", 2, "single document"),
        ("a: !!python/object:os.system x\n", 1, "constructor"),
        ("a: 'unterminated\n", 2, "YAML syntax error"),
    ],
)
def test_yaml_syntax_errors_have_their_line(text: str, line: int, words: str) -> None:
    assert _one(text)[0] == line
    assert words in _one(text)[2]
    assert _one(text)[1] == "(file)"


def test_alias_bombs_are_refused() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    line, _, message = _one("\n".join(lines))
    assert "expand to too many nodes" in message and line == 1


def test_format_path() -> None:
    assert format_path(("machines", 2, "nics", 0, "mac")) == "machines[2].nics[0].mac"
    assert format_path(()) == "(file)"


# --- the schema ---------------------------------------------------------------------


def test_a_good_file_has_no_problems_and_keeps_only_given_keys() -> None:
    doc, problems = parse(
        textwrap.dedent(
            """\
            racks: [{name: r1}]
            switches:
              - {name: sw1, rack: r1, ports: [swp1, {name: swp2, vlan: 100}]}
            pdus:
              - {name: p1, outlets: 4}
            machines:
              - name: n1
                nics: [{mac: 52-54-00-AA-BB-CC, switch_port: sw1/swp1}]
                outlets: [p1/1]
            """
        )
    )
    assert problems == []
    assert doc.of("rack")[0].given == {"name": "r1"}
    assert doc.of("switch")[0].given["ports"] == [{"name": "swp1"}, {"name": "swp2", "vlan": 100}]
    assert doc.of("pdu")[0].given["outlets"] == [1, 2, 3, 4]
    machine = doc.of("machine")[0]
    assert machine.given["nics"] == [{"mac": "52:54:00:aa:bb:cc", "switch_port": "sw1/swp1"}]
    assert (machine.line, machine.loc) == (7, ("machines", 0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("racks:\n  - name: r1\n    u_hieght: 4\n", (3, "racks[0].u_hieght", "'u_height'")),
        ("racks:\n  - name: r1\n    u_height: -1\n", (3, "racks[0].u_height", "greater than")),
        ("machines:\n  - name: n1\n    cpus: -4\n", (3, "machines[0].cpus", "greater than")),
        ("machines:\n  - name: n1\n    u_position: '3'\n", (3, "machines[0].u_position", "'3'")),
        ("machines:\n  - name: n1\n    cpus: 1.5\n", (3, "machines[0].cpus", "valid integer")),
        (
            "machines:\n  - name: n1\n    nics:\n      - {mac: 52:54:00:zz:00:01}\n",
            (4, "machines[0].nics[0].mac", "is not a MAC address"),
        ),
        (
            "machines:\n  - name: n1\n    nics: [{mac: '52:54:00:00:00:01', switch_port: sw1}]\n",
            (3, "machines[0].nics[0].switch_port", "SWITCH/PORT"),
        ),
        ("machines:\n  - name: n1\n    outlets: [p1/0]\n", (3, "machines[0].outlets[0]", "PDU/N")),
        ("machines:\n  - name: ../etc\n", (2, "machines[0].name", "names use")),
        ("machines:\n  - u_height: 1\n", (2, "machines[0].name", "missing required key")),
        (
            "machines:\n  - name: n1\n    bmc: {password: a, password_env: B}\n",
            (3, "machines[0].bmc", "not both"),
        ),
        (
            "machines:\n  - name: n1\n    bmc: {driver: ilo}\n",
            (3, "machines[0].bmc.driver", "'ipmi', 'redfish' or 'manual'"),
        ),
        ("switches:\n  - name: s\n    ports: [7]\n", (3, "switches[0].ports[0]", "a mapping")),
        ("pdus:\n  - {name: p, outlets: -1}\n", (2, "pdus[0].outlets", "expected a list")),
        ("machines: {name: n1}\n", (1, "machines", "expected a list of machines")),
        ("rack:\n  - name: r1\n", (1, "rack", "did you mean 'racks'")),
        ("version: 2\nracks: []\n", (1, "version", "unknown version 2")),
        ("racks: [{name: r1}, {name: r1}]\n", (1, "racks[1].name", "already at line 1")),
        ('racks: [{name: "r\\0"}]\n', (1, "racks[0].name", "NUL")),
        ("- a\n- b\n", (1, "(file)", "top level must be a mapping")),
        ("", (None, "(file)", "the document is empty")),
        ("# only a comment\n", (None, "(file)", "the document is empty")),
    ],
)
def test_schema_problems_name_line_path_and_reason(
    text: str, expected: tuple[int | None, str, str]
) -> None:
    problems = _problems(text)
    line, path, words = expected
    assert any(p[0] == line and p[1] == path and words in p[2] for p in problems), problems


def test_every_problem_is_reported_not_just_the_first() -> None:
    problems = _problems(
        """\
        racks:
          - name: r1
            u_height: 0
        machines:
          - name: n1
            colour: red
          - name: n2
            nics: [{mac: nope}]
        """
    )
    assert [(line, path) for line, path, _ in problems] == [
        (3, "racks[0].u_height"),
        (6, "machines[0].colour"),
        (8, "machines[1].nics[0].mac"),
    ]


def test_invalid_entries_are_remembered_by_name() -> None:
    doc, problems = parse("racks: [{name: r1, u_height: 100}]\nmachines: [{name: n1, rack: r1}]\n")
    assert len(problems) == 1
    assert doc.invalid["rack"] == {"r1"} and [e.name for e in doc.of("machine")] == ["n1"]


def test_env_names_reads_password_env_only() -> None:
    text = textwrap.dedent(
        """\
        machines:
          - {name: a, bmc: {password_env: PW_A}}
          - {name: b, bmc: {password: literal}}
          - {name: c, bmc: {password_env: PW_A}}
          - {name: d, bmc: {password_env: PW_D}}
        """
    )
    assert env_names(text) == ["PW_A", "PW_D"]
    assert env_names("machines: [") == []
    assert env_names("- 1") == []


# --- merge, diff and dump -------------------------------------------------------


def _entry(kind: str, text: str) -> inventory_spec.Entry:
    doc, problems = parse(text)
    assert problems == []
    return doc.of(kind)[0]


def test_merge_keeps_what_the_file_leaves_out() -> None:
    stored: dict[str, Any] = {
        **{"name": "n1", **inventory_state.DEFAULTS["machine"]},
        "cpus": 8,
        "nics": [
            {"mac": "52:54:00:00:00:01", "name": "eth0", "pxe": True, "ip_address": "10.0.0.5"},
            {"mac": "52:54:00:00:00:02", "name": "eth1", "pxe": False, "ip_address": ""},
        ],
    }
    for nic in stored["nics"]:
        nic["switch_port"] = None
    entry = _entry(
        "machine",
        "machines:\n  - name: n1\n    u_position: 3\n    nics: [{mac: '52:54:00:00:00:01'}]\n",
    )
    want = inventory_state.merge(entry, stored)
    assert want["cpus"] == 8 and want["u_position"] == 3
    # The list is whole (eth1 goes), but the listed NIC keeps its stored fields.
    assert want["nics"] == [stored["nics"][0]]
    changes = inventory_state.diff("machine", stored, want)
    assert set(changes) == {"u_position", "nics[52:54:00:00:00:02]"}
    assert changes["u_position"] == {"from": None, "to": 3}
    assert changes["nics[52:54:00:00:00:02]"]["to"] is None


def test_merge_for_a_new_object_uses_defaults_and_bmc_never_holds_passwords() -> None:
    entry = _entry(
        "machine", "machines:\n  - name: n1\n    bmc: {address: 10.1.1.1, password: s}\n"
    )
    want = inventory_state.merge(entry, None)
    assert want["u_height"] == 1 and want["arch"] == "x86_64"
    assert want["bmc"] == {
        "driver": "ipmi",
        "address": "10.1.1.1",
        "port": 623,
        "username": "",
        "credential_set": None,
        "cert_fingerprint": "",
        "tls_verify": "fingerprint",
    }
    assert inventory_state.diff("machine", want, want) == {}


def test_lists_compare_in_any_order() -> None:
    a = _entry("switch", "switches: [{name: s, ports: [swp10, swp2, swp1]}]\n")
    b = _entry("switch", "switches: [{name: s, ports: [swp1, swp2, swp10]}]\n")
    wa, wb = inventory_state.merge(a, None), inventory_state.merge(b, None)
    assert wa == wb
    assert [p["name"] for p in wa["ports"]] == ["swp1", "swp2", "swp10"]


def test_dump_writes_flow_parts_and_reads_back_equal() -> None:
    document = {
        "version": 1,
        "machines": [
            {
                "name": "n1",
                "tags": FlowList(["a", "b"]),
                "nics": [Flow({"mac": "52:54:00:00:00:01", "name": "eth0"})],
                "bmc": None,
            }
        ],
    }
    text = dump(document, "# header\n")
    assert text.startswith("# header\n")
    assert "  - {mac: '52:54:00:00:00:01', name: eth0}\n" in text
    assert "tags: [a, b]" in text
    assert load(text)[0] == inventory_yaml.plain(document)
