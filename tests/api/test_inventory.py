"""Inventory as code through the API, on SQLite and PostgreSQL: plan, apply, export, prune."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from provisiond.container import Services
from provisiond.lifecycle import Ev, advance
from provisiond.models import Bmc, CredentialSet, Event, Machine, Nic, Outlet, Rack, SwitchPort
from tests.conftest import Api

EXAMPLE = (Path(__file__).parents[2] / "inventory" / "example.yaml").read_text()
YAML = {"content-type": "application/yaml"}

# Lines: 1 racks, 2 r1, 3 switches, 4 sw1, 5 pdus, 6 pdu1, 7 machines, 8-12 m1.
BASE = textwrap.dedent(
    """\
    racks:
      - {name: r1, u_height: 10}
    switches:
      - {name: sw1, rack: r1, u_position: 10, ports: [p1, p2, p3]}
    pdus:
      - {name: pdu1, rack: r1, outlets: 4}
    machines:
      - name: m1
        rack: r1
        u_position: 1
        nics: [{mac: "52:54:00:00:00:01", switch_port: sw1/p1}]
        outlets: [pdu1/1]
    """
)


def post(api: Api, route: str, text: str, *, prune: bool = False, role: str = "operator") -> Any:
    params = {"prune": "true"} if prune else {}
    return api.as_(role).post(
        f"/api/v1/inventory/{route}", content=text, headers=YAML, params=params
    )


def applied(api: Api, text: str, *, prune: bool = False) -> dict[str, Any]:
    r = post(api, "apply", text, prune=prune)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["applied"] is True
    return body


def export(api: Api) -> str:
    r = api.operator.get("/api/v1/inventory/export")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/yaml")
    return str(r.text)


def problems(r: Any) -> list[tuple[int | None, str, str]]:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_failed" and err["hint"]
    return [(p["line"], p["path"], p["message"]) for p in err["problems"]]


def changes(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["name"]): c for c in body["changes"]}


def machine(services: Services, name: str) -> Machine:
    with services.db.read_session() as session:
        row = session.exec(select(Machine).where(Machine.name == name)).one()
        _ = row.nics, row.bmc  # load before the session closes
        return row


EMPTY = "version: 1\nracks: []\nswitches: []\npdus: []\nmachines: []\n"


# --- plan, apply, idempotence, round trip ------------------------------------------


def test_plan_shows_creates_and_writes_nothing(api: Api) -> None:
    r = post(api, "plan", EXAMPLE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["applied"] is False
    assert body["summary"] == {"create": 6, "update": 0, "unchanged": 0, "delete": 0}
    vm3 = changes(body)[("machine", "vm3")]
    assert vm3["action"] == "create"
    assert vm3["line"] == EXAMPLE.splitlines().index("  - name: vm3") + 1
    assert vm3["fields"]["u_height"] == {"from": None, "to": 2}
    assert vm3["fields"]["outlets"]["to"] == ["lab1-pdu1/3", "lab1-pdu1/4"]
    assert [c["kind"] for c in body["changes"]] == ["rack", "switch", "pdu", *["machine"] * 3]
    assert yaml.safe_load(export(api))["machines"] == []


def test_apply_creates_everything_and_enrolls_machines(api: Api, services: Services) -> None:
    body = applied(api, EXAMPLE)
    assert body["summary"]["create"] == 6
    vm1 = machine(services, "vm1")
    assert vm1.state == "enrolled" and vm1.u_position == 1 and vm1.tags == ["ci", "virtual"]
    assert [n.mac for n in vm1.nics] == ["52:54:00:00:00:01"] and vm1.nics[0].pxe
    assert vm1.bmc is not None and (vm1.bmc.address, vm1.bmc.port) == ("127.0.0.1", 16001)
    assert vm1.bmc.secret_encrypted is None
    with services.db.read_session() as session:
        port = session.get(SwitchPort, vm1.nics[0].switch_port_id)
        assert port is not None and port.name == "swp1"
        plugged = session.exec(select(Outlet.number).where(Outlet.machine_id == vm1.id)).all()
        assert plugged == [1]
        assert len(session.exec(select(Outlet)).all()) == 8
        enroll = session.exec(select(Event).where(Event.machine_name == "vm1")).one()
        assert (enroll.event, enroll.to_state) == ("enroll", "enrolled")
        assert enroll.actor == "token:test-operator"


def test_reapply_is_all_unchanged(api: Api) -> None:
    applied(api, EXAMPLE)
    body = applied(api, EXAMPLE)
    assert body["summary"] == {"create": 0, "update": 0, "unchanged": 6, "delete": 0}
    assert all(c["fields"] == {} for c in body["changes"])


def test_export_round_trip_is_unchanged_and_file_equal(api: Api) -> None:
    applied(api, EXAMPLE)
    first = export(api)
    assert "password:" not in first
    body = applied(api, first)
    assert body["summary"] == {"create": 0, "update": 0, "unchanged": 6, "delete": 0}
    assert export(api) == first
    # The export is complete: applied to an empty database it rebuilds the same inventory.
    applied(api, EMPTY, prune=True)
    assert yaml.safe_load(export(api))["racks"] == []
    applied(api, first)
    assert export(api) == first


def test_update_changes_only_given_fields_and_keeps_the_rest(api: Api, services: Services) -> None:
    applied(api, EXAMPLE)
    with services.db.transaction() as session:  # as inspection would
        row = session.exec(select(Machine).where(Machine.name == "vm1")).one()
        row.cpus, row.ram_mib = 4, 2048
        nic = session.exec(select(Nic).where(Nic.mac == "52:54:00:00:00:01")).one()
        nic.ip_address = "10.0.0.11"
    assert applied(api, EXAMPLE)["summary"]["unchanged"] == 6
    moved = EXAMPLE.replace("u_position: 1\n", "u_position: 6\n").replace(
        "port: 16001, username: admin}", "port: 16011, username: root}"
    )
    body = applied(api, moved)
    change = changes(body)[("machine", "vm1")]
    assert change["action"] == "update"
    assert change["fields"] == {
        "u_position": {"from": 1, "to": 6},
        "bmc.port": {"from": 16001, "to": 16011},
        "bmc.username": {"from": "admin", "to": "root"},
    }
    assert body["summary"] == {"create": 0, "update": 1, "unchanged": 5, "delete": 0}
    vm1 = machine(services, "vm1")
    assert (vm1.u_position, vm1.cpus, vm1.ram_mib) == (6, 4, 2048)
    assert vm1.nics[0].ip_address == "10.0.0.11"
    assert "cpus: 4" in export(api)
    with services.db.read_session() as session:
        audit = session.exec(select(Event).where(Event.kind == "audit")).one()
        assert audit.machine_name == "vm1" and "u_position" in audit.message


def test_null_clears_and_parts_lists_are_whole(api: Api, services: Services) -> None:
    applied(api, BASE)
    text = BASE.replace(
        'nics: [{mac: "52:54:00:00:00:01", switch_port: sw1/p1}]',
        'nics: [{mac: "52:54:00:00:00:02", name: eth1}]',
    ).replace(
        "outlets: [pdu1/1]", "outlets: []\n    bmc: null\n    u_position: null\n    rack: null"
    )
    text = text.replace("    rack: r1\n    u_position: 1\n", "")
    body = applied(api, text)
    fields = changes(body)[("machine", "m1")]["fields"]
    assert set(fields) == {
        "rack",
        "u_position",
        "outlets",
        "nics[52:54:00:00:00:01]",
        "nics[52:54:00:00:00:02]",
    }
    m1 = machine(services, "m1")
    assert (m1.rack_id, m1.u_position, m1.bmc) == (None, None, None)
    assert [n.mac for n in m1.nics] == ["52:54:00:00:00:02"]


def test_macs_ports_and_outlets_can_change_hands_in_one_apply(api: Api, services: Services) -> None:
    two = BASE + (
        "  - name: m2\n"
        "    rack: r1\n"
        "    u_position: 2\n"
        '    nics: [{mac: "52:54:00:00:00:02", switch_port: sw1/p2}]\n'
        "    outlets: [pdu1/2]\n"
    )
    applied(api, two)
    swapped = (
        two.replace("sw1/p1", "sw1/TMP")
        .replace("sw1/p2", "sw1/p1")
        .replace("sw1/TMP", "sw1/p2")
        .replace("[pdu1/1]", "[pdu1/X]")
        .replace("[pdu1/2]", "[pdu1/1]")
        .replace("[pdu1/X]", "[pdu1/2]")
    )
    body = applied(api, swapped)
    assert body["summary"]["update"] == 2
    m1 = machine(services, "m1")
    with services.db.read_session() as session:
        port = session.get(SwitchPort, m1.nics[0].switch_port_id)
        assert port is not None and port.name == "p2"
    # A MAC moves from m1 to m2 while m1 lets go of it.
    moved = swapped.replace('{mac: "52:54:00:00:00:01", switch_port: sw1/p2}', "").replace(
        '{mac: "52:54:00:00:00:02", switch_port: sw1/p1}',
        '{mac: "52:54:00:00:00:02", switch_port: sw1/p1}, {mac: "52:54:00:00:00:01"}',
    )
    applied(api, moved)
    assert machine(services, "m1").nics == []
    assert sorted(n.mac for n in machine(services, "m2").nics) == [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
    ]
    assert applied(api, moved)["summary"]["update"] == 0


# --- prune ---------------------------------------------------------------------------


def _without_vm3(text: str) -> str:
    return text[: text.index("  - name: vm3")]


def test_delete_only_with_prune(api: Api, services: Services) -> None:
    applied(api, EXAMPLE)
    body = applied(api, _without_vm3(EXAMPLE))
    assert body["summary"] == {"create": 0, "update": 0, "unchanged": 5, "delete": 0}
    assert machine(services, "vm3").state == "enrolled"

    r = post(api, "plan", _without_vm3(EXAMPLE), prune=True)
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["delete"] == 1
    assert changes(r.json())[("machine", "vm3")] == {
        "action": "delete",
        "kind": "machine",
        "name": "vm3",
        "line": None,
        "fields": {},
    }
    assert machine(services, "vm3")  # a plan deletes nothing

    applied(api, _without_vm3(EXAMPLE), prune=True)
    with services.db.read_session() as session:
        assert session.exec(select(Machine).where(Machine.name == "vm3")).first() is None
        assert session.exec(select(Nic).where(Nic.mac == "52:54:00:00:00:03")).first() is None
        freed = session.exec(select(Outlet).where(Outlet.number.in_([3, 4]))).all()  # type: ignore[attr-defined]
        assert [o.machine_id for o in freed] == [None, None]
        gone = session.exec(select(Event).where(Event.event == "delete")).one()
        assert gone.machine_name == "vm3" and gone.actor == "token:test-operator"


def test_rename_with_prune_hands_over_the_mac_port_and_outlets(
    api: Api, services: Services
) -> None:
    applied(api, EXAMPLE)
    body = applied(api, EXAMPLE.replace("name: vm3", "name: vm4"), prune=True)
    assert body["summary"] == {"create": 1, "update": 0, "unchanged": 5, "delete": 1}
    vm4 = machine(services, "vm4")
    assert [n.mac for n in vm4.nics] == ["52:54:00:00:00:03"]
    with services.db.read_session() as session:
        plugged = session.exec(select(Outlet.number).where(Outlet.machine_id == vm4.id)).all()
        assert sorted(plugged) == [3, 4]


def test_prune_to_an_empty_inventory(api: Api, services: Services) -> None:
    applied(api, EXAMPLE)
    body = applied(api, EMPTY, prune=True)
    assert body["summary"]["delete"] == 6
    assert [c["kind"] for c in body["changes"]] == [*["machine"] * 3, "pdu", "switch", "rack"]
    with services.db.read_session() as session:
        assert session.exec(select(Rack)).all() == []
        assert session.exec(select(SwitchPort)).all() == []


def test_prune_refuses_machines_that_are_busy(api: Api, services: Services) -> None:
    applied(api, EXAMPLE)
    with services.db.transaction() as session:
        row = session.exec(select(Machine).where(Machine.name == "vm3")).one()
        advance(session, row, Ev.INSPECT, actor="test")
    r = post(api, "apply", _without_vm3(EXAMPLE), prune=True)
    [(line, path, message)] = problems(r)
    assert (line, path) == (None, "machine vm3 (not in this file)")
    assert "it is inspecting" in message and "release or retire it first" in message
    assert machine(services, "vm3").state == "inspecting"


def test_prune_sees_references_to_what_it_deletes(api: Api) -> None:
    applied(api, EXAMPLE)
    r = post(api, "plan", "machines:\n  - name: vm1\n", prune=True)
    found = problems(r)
    assert (
        2,
        "machines[0]",
        "rack lab1 is not in this file, so --prune would delete it (rack kept from the database)",
    ) in found
    assert any("switch lab1-sw1 is not in this file" in m for _, _, m in found)


# --- problems: each kind with its line and path; nothing written ------------------------

CASES = [
    (
        "overlap",
        "  - {name: m2, rack: r1, u_position: 1}\n",
        13,
        "machines[1]",
        "overlaps machine m1",
    ),
    (
        "does-not-fit",
        "  - {name: m2, rack: r1, u_position: 9, u_height: 3}\n",
        13,
        "machines[1]",
        "does not fit rack r1 of 10U",
    ),
    (
        "duplicate-mac",
        "  - {name: m2, nics: [{mac: '52:54:00:00:00:01'}]}\n",
        13,
        "machines[1].nics[0].mac",
        "MAC 52:54:00:00:00:01 is already on machine m1 (line 8)",
    ),
    ("unknown-rack", "  - {name: m2, rack: r2}\n", 13, "machines[1].rack", "no rack named 'r2'"),
    (
        "unknown-switch",
        "  - {name: m2, nics: [{mac: '52:54:00:00:00:02', switch_port: sw2/p1}]}\n",
        13,
        "machines[1].nics[0].switch_port",
        "no switch named 'sw2' in this file or the database (did you mean sw1?)",
    ),
    (
        "unknown-port",
        "  - {name: m2, nics: [{mac: '52:54:00:00:00:02', switch_port: sw1/p9}]}\n",
        13,
        "machines[1].nics[0].switch_port",
        "switch sw1 has no port p9",
    ),
    (
        "port-used-twice",
        "  - {name: m2, nics: [{mac: '52:54:00:00:00:02', switch_port: sw1/p1}]}\n",
        13,
        "machines[1].nics[0].switch_port",
        "switch port sw1/p1 is already used by NIC 52:54:00:00:00:01 of machine m1 (line 8)",
    ),
    ("unknown-pdu", "  - {name: m2, outlets: [pdu2/1]}\n", 13, "machines[1].outlets[0]", "no pdu"),
    (
        "unknown-outlet",
        "  - {name: m2, outlets: [pdu1/5]}\n",
        13,
        "machines[1].outlets[0]",
        "pdu pdu1 has no outlet 5",
    ),
    (
        "outlet-used-twice",
        "  - {name: m2, outlets: [pdu1/2, pdu1/1]}\n",
        13,
        "machines[1].outlets[1]",
        "outlet pdu1/1 is already used by machine m1 (line 8)",
    ),
    (
        "unknown-credential-set",
        "  - {name: m2, bmc: {credential_set: lab}}\n",
        13,
        "machines[1].bmc.credential_set",
        "no credential set named 'lab'",
    ),
    (
        "bad-mac",
        "  - {name: m2, nics: [{mac: '52:54:00:00:00'}]}\n",
        13,
        "machines[1].nics[0].mac",
        "is not a MAC address",
    ),
    ("negative", "  - {name: m2, ram_mib: -1}\n", 13, "machines[1].ram_mib", "greater than or"),
    (
        "unknown-key",
        "  - name: m2\n    u_postion: 3\n",
        14,
        "machines[1].u_postion",
        "unknown key 'u_postion' (did you mean 'u_position'?)",
    ),
    ("yaml-syntax", "  - {name: m2\n", 14, "(file)", "YAML syntax error"),
    (
        "position-without-rack",
        "  - {name: m2, u_position: 4}\n",
        13,
        "machines[1].u_position",
        "u_position needs a rack",
    ),
    (
        "password-env-unset",
        "  - {name: m2, bmc: {password_env: PROVISIOND_TEST_UNSET}}\n",
        13,
        "machines[1].bmc.password_env",
        "environment variable PROVISIOND_TEST_UNSET is not set",
    ),
    (
        "listed-twice",
        "  - {name: m2, outlets: [pdu1/2, pdu1/2]}\n",
        13,
        "machines[1].outlets[1]",
        "outlet pdu1/2 is listed twice",
    ),
]


@pytest.mark.parametrize(
    ("extra", "line", "path", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_problem_names_line_and_path_and_nothing_is_written(
    api: Api, services: Services, extra: str, line: int, path: str, words: str
) -> None:
    r = post(api, "apply", BASE + extra)
    found = problems(r)
    assert any(p == (line, path, p[2]) and words in p[2] for p in found), found
    with services.db.read_session() as session:  # BASE alone is valid, yet none of it was written
        assert session.exec(select(Rack)).all() == []
        assert session.exec(select(Machine)).all() == []
    assert (
        post(api, "plan", BASE + extra).json()["error"]["problems"] == r.json()["error"]["problems"]
    )


def test_switches_and_pdus_must_fit_too(api: Api) -> None:
    text = BASE.replace("u_position: 10, ports", "u_position: 10, u_height: 2, ports").replace(
        "{name: pdu1, rack: r1,", "{name: pdu1, rack: r1, u_position: 1, u_height: 1,"
    )
    found = problems(post(api, "apply", text))
    assert [(line, path) for line, path, _ in found] == [(4, "switches[0]"), (8, "machines[0]")]
    assert "switch sw1 at U10 (height 2U) does not fit rack r1" in found[0][2]
    assert "overlaps pdu pdu1" in found[1][2]


def test_every_problem_is_reported_at_once(api: Api) -> None:
    extra = "".join(c[1] for c in CASES if c[0] in ("overlap", "unknown-rack", "negative"))
    extra = extra.replace("name: m2, rack: r2", "name: m3, rack: r2")
    extra = extra.replace("name: m2, ram_mib", "name: m4, ram_mib")
    found = problems(post(api, "apply", BASE + extra))
    assert [(line, path) for line, path, _ in found] == [
        (13, "machines[1]"),
        (14, "machines[2].rack"),
        (15, "machines[3].ram_mib"),
    ]


def test_duplicate_mac_against_a_machine_outside_the_file(api: Api, services: Services) -> None:
    applied(api, BASE)
    before = export(api)
    text = "machines:\n  - name: m2\n    nics: [{mac: '52:54:00:00:00:01'}]\n"
    [(line, path, message)] = problems(post(api, "apply", text))
    assert (line, path) == (3, "machines[0].nics[0].mac")
    assert (
        message
        == "MAC 52:54:00:00:00:01 is already on machine m1 (in the database, not in this file)"
    )
    assert export(api) == before


def test_removing_a_port_in_use_blames_the_switch(api: Api) -> None:
    applied(api, BASE)
    text = "switches:\n  - {name: sw1, rack: r1, u_position: 10, ports: [p2, p3]}\n"
    [(line, path, message)] = problems(post(api, "apply", text))
    assert (line, path) == (2, "switches[0].ports")
    assert "port p1 is removed, but NIC 52:54:00:00:00:01 of machine m1" in message


# --- secrets ---------------------------------------------------------------------------

SECRET = "hunter2-very-secret"


def _with_password(field: str) -> str:
    return EXAMPLE.replace(
        "port: 16001, username: admin}", f"port: 16001, username: admin, {field}}}"
    )


def test_password_env_is_stored_encrypted_and_never_shown(api: Api, services: Services) -> None:
    text = _with_password("password_env: VM1_PW")
    body = json.dumps({"yaml": text, "env": {"VM1_PW": SECRET}})
    r = api.operator.post(
        "/api/v1/inventory/apply", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert SECRET not in r.text
    vm1 = machine(services, "vm1")
    assert vm1.bmc is not None and vm1.bmc.secret_encrypted
    assert SECRET not in vm1.bmc.secret_encrypted
    assert services.secrets.decrypt(vm1.bmc.secret_encrypted) == SECRET
    stored = vm1.bmc.secret_encrypted

    exported = export(api)
    assert SECRET not in exported and "password:" not in exported and "password_env" not in exported
    # No password in the file keeps the stored one: the export re-applies as unchanged.
    assert applied(api, exported)["summary"]["update"] == 0
    assert applied(api, EXAMPLE)["summary"]["update"] == 0
    assert machine(services, "vm1").bmc.secret_encrypted == stored  # type: ignore[union-attr]
    # The same password again is no change; a new one is, and is still not shown.
    same = api.operator.post(
        "/api/v1/inventory/plan", content=body, headers={"content-type": "application/json"}
    )
    assert same.json()["summary"]["update"] == 0
    r = post(api, "apply", _with_password("password: another-secret"))
    assert r.status_code == 200 and "another-secret" not in r.text
    fields = changes(r.json())[("machine", "vm1")]["fields"]
    assert fields == {"bmc.password": {"from": "(hidden)", "to": "(new, hidden)"}}
    bmc = machine(services, "vm1").bmc
    assert bmc is not None and bmc.secret_encrypted
    assert services.secrets.decrypt(bmc.secret_encrypted) == "another-secret"


def test_passwords_are_not_echoed_in_problems(api: Api) -> None:
    for field in (
        f"password: {SECRET}, colour: red",
        "password: 12345",
        f"password: '{'x' * 2000}'",
    ):
        r = post(api, "apply", _with_password(field))
        assert r.status_code == 422, r.text
        assert SECRET not in r.text and "12345" not in r.text and "xxxxxxxx" not in r.text
    r = post(
        api,
        "apply",
        EXAMPLE.replace(
            "bmc: {driver: ipmi, address: 127.0.0.1, port: 16001, username: admin}",
            f"bmc: {SECRET}",
        ),
    )
    assert r.status_code == 422 and SECRET not in r.text


def test_credential_set_reference_round_trips(api: Api, services: Services) -> None:
    with services.db.transaction() as session:
        session.add(
            CredentialSet(
                name="lab", username="admin", secret_encrypted=services.secrets.encrypt(SECRET)
            )
        )
    text = EXAMPLE.replace("port: 16002, username: admin}", "port: 16002, credential_set: lab}")
    applied(api, text)
    with services.db.read_session() as session:
        bmc = session.exec(select(Bmc).where(Bmc.port == 16002)).one()
        assert bmc.credential_set_id is not None and bmc.secret_encrypted is None
    exported = export(api)
    assert "credential_set: lab" in exported and SECRET not in exported
    assert applied(api, exported)["summary"]["update"] == 0


# --- transport: roles and bad bodies -----------------------------------------------


def test_roles(api: Api) -> None:
    for route in ("plan", "apply"):
        assert post(api, route, EXAMPLE, role="ci").status_code == 403
        assert (
            api.anonymous.post(
                f"/api/v1/inventory/{route}", content=EXAMPLE, headers=YAML
            ).status_code
            == 401
        )
    assert api.ci.get("/api/v1/inventory/export").status_code == 403
    assert api.anonymous.get("/api/v1/inventory/export").status_code == 401
    assert post(api, "plan", EXAMPLE, role="admin").status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"racks: [{name: \xff}]", "application/yaml", 400),
        (b"{not json", "application/json", 400),
        (b'{"yaml": 1}', "application/json", 400),
        (b'{"yaml": "racks: []", "env": {"A": 1}}', "application/json", 400),
        (b"racks: []", "image/png", 400),
        (b"", "application/yaml", 422),
        (b"racks: []", "text/plain; charset=utf-8", 200),
        (b"racks: []", "", 200),
    ],
)
def test_bad_bodies_are_4xx_with_a_hint(
    api: Api, body: bytes, content_type: str, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = api.operator.post("/api/v1/inventory/plan", content=body, headers=headers)
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.json()["error"]["hint"]


def test_root_device_hints_apply_export_and_refuse_nonsense(api: Api, services: Services) -> None:
    """Root-device hints are planned in the file like any field: applied, exported
    back, changed as an update, and refused (with the field named) when malformed."""
    text = "machines:\n  - name: m9\n    root_device: {size: '>= 100', rotational: false}\n"
    applied(api, text)
    assert machine(services, "m9").root_device == {"size": ">= 100", "rotational": False}
    assert "root_device:" in export(api) and ">= 100" in export(api)
    body = applied(api, text.replace("rotational: false", "serial: S123"))
    change = changes(body)[("machine", "m9")]
    assert change["action"] == "update" and "root_device" in str(change["fields"])
    assert machine(services, "m9").root_device == {"size": ">= 100", "serial": "S123"}
    bad = post(api, "plan", text.replace("'>= 100'", "'lots'"))
    assert bad.status_code == 422 and "root_device" in bad.text, bad.text


def test_brief_plans_leave_out_the_fields_of_creations(api: Api) -> None:
    """The CLI's table shows no fields of what is created, so it asks for none: for a
    new inventory of 10,000 machines that is a tenth of the JSON."""
    r = api.operator.post(
        "/api/v1/inventory/plan", content=EXAMPLE, headers=YAML, params={"brief": "true"}
    )
    assert r.status_code == 200, r.text
    assert {c["action"] for c in r.json()["changes"]} == {"create"}
    assert all(c["fields"] == {} for c in r.json()["changes"])
    assert r.json()["summary"]["create"] == 6
    applied(api, EXAMPLE)
    moved = EXAMPLE.replace("u_position: 1\n", "u_position: 6\n")
    r = api.operator.post(
        "/api/v1/inventory/apply", content=moved, headers=YAML, params={"brief": "true"}
    )
    assert r.status_code == 200 and r.json()["applied"] is True
    assert changes(r.json())[("machine", "vm1")]["fields"] == {"u_position": {"from": 1, "to": 6}}
    bad = api.operator.post(
        "/api/v1/inventory/plan", content=EXAMPLE, headers=YAML, params={"brief": "maybe"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["hint"], bad.text
