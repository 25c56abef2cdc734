from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from sqlmodel import select
from typer.testing import CliRunner

from provisiond import lifecycle, locks
from provisiond.api import create_app
from provisiond.cli import app as cli_app
from provisiond.container import Services
from provisiond.models import Bmc, Machine, Nic
from tests.conftest import Api

M = "/api/v1/machines"


def node(name: str = "n1", **extra: Any) -> dict[str, Any]:
    return {"name": name, **extra}


def make(api: Api, name: str = "n1", **extra: Any) -> dict[str, Any]:
    r = api.operator.post(M, json=node(name, **extra))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def rack(api: Api, name: str = "r1", u_height: int = 10) -> None:
    r = api.operator.post("/api/v1/racks", json={"name": name, "u_height": u_height})
    assert r.status_code == 201, r.text


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["message"] and err["hint"], err
    return err


def test_create_enrolls_and_reads_back_by_name_and_uuid(api: Api, services: Services) -> None:
    rack(api)
    body = make(
        api,
        rack="r1",
        u_position=3,
        u_height=2,
        tags=["gpu", "dc1"],
        arch="aarch64",
        cpus=64,
        ram_mib=262144,
        disks=[{"name": "nvme0n1", "size_gib": 960}],
        serial="SN1",
        vendor="Ampere",
        model="Mt.Collins",
        nics=[{"mac": "AA-BB-CC-00-00-01", "name": "eth0", "pxe": True}],
        bmc={"driver": "redfish", "address": "10.0.3.17", "username": "root", "password": "pw"},
    )
    assert body["state"] == "enrolled"
    assert body["allowed_events"] == ["inspect", "manage", "retire"]
    assert body["rack"] == "r1" and body["u_position"] == 3
    assert body["nics"] == [
        {
            "mac": "aa:bb:cc:00:00:01",
            "name": "eth0",
            "pxe": True,
            "ip_address": "",
            "switch_port": None,
            "lldp": {},
            "lldp_seen_at": None,
            "cabling": "",
            "cabling_detail": {},
        }
    ]
    assert body["bmc"] == {
        "driver": "redfish",
        "address": "10.0.3.17",
        "port": 443,
        "username": "root",
        "password_set": True,
        "credential_set": None,
        "cert_fingerprint": "",
        "tls_verify": "fingerprint",
        "unreachable_reason": "",
    }
    assert "password" not in body["bmc"] and "secret_encrypted" not in json.dumps(body)
    by_uuid = api.ci.get(f"{M}/{body['uuid']}").json()
    assert by_uuid == api.ci.get(f"{M}/n1").json() == body
    events = api.ci.get("/api/v1/events", params={"machine": "n1"}).json()
    assert [(e["event"], e["to_state"], e["actor"]) for e in events] == [
        ("enroll", "enrolled", "token:test-operator")
    ]
    with services.db.read_session() as s:
        bmc = s.exec(select(Bmc)).one()
        assert bmc.secret_encrypted and services.secrets.decrypt(bmc.secret_encrypted) == "pw"


def test_list_filters(api: Api) -> None:
    rack(api)
    make(api, "a", rack="r1", tags=["gpu"])
    make(api, "b", arch="aarch64", tags=["gpu", "big"])
    make(api, "c")
    api.operator.post(f"{M}/c/events", json={"event": "manage"})

    def names(**params: str) -> list[str]:
        r = api.ci.get(M, params=params)
        assert r.status_code == 200, r.text
        return [m["name"] for m in r.json()]

    assert names() == ["a", "b", "c"]
    assert names(state="maintenance") == ["c"]
    assert names(state="enrolled", tag="gpu") == ["a", "b"]
    assert names(rack="r1") == ["a"]
    assert names(arch="aarch64") == ["b"]
    assert names(tag="big") == ["b"]
    err = error(api.ci.get(M, params={"state": "bogus"}), 422)
    assert "available" in err["hint"]
    error(api.ci.get(M, params={"rack": "nope"}), 422)


def test_bad_input_is_422_with_problem_paths(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (node(nics=[{"mac": "not-a-mac"}]), "nics.0.mac"),
        (node(nics=[{"mac": "aa:bb:cc:dd:ee:ff"}, {"mac": "AABB.CCDD.EEFF"}]), "nics"),
        (node(bmc={"driver": "telnet"}), "bmc.driver"),
        (node(bmc={"driver": "ipmi", "port": 70000}), "bmc.port"),
        (node(u_height=0), "u_height"),
        (node(tags=["a", "a"]), "tags"),
        (node(cpus=-1), "cpus"),
        (node(serial="x\x00y"), "serial"),
        (node(surprise=1), "surprise"),
        ({"name": "../etc"}, "name"),
    ]
    for body, path in cases:
        err = error(api.operator.post(M, json=body), 422)
        assert path in {p["path"] for p in err["problems"]}, (body, err)
    err = error(api.operator.post(M, json=node(bmc={"driver": "ipmi"})), 422)
    assert err["problems"][0]["path"] == "bmc.address"
    err = error(api.operator.post(M, json=node(u_position=4)), 422)
    assert "rack" in err["hint"]
    err = error(api.operator.post(M, json=node(rack="ghost")), 422)
    assert "POST /api/v1/racks" in err["hint"]
    assert api.ci.get(M).json() == []


def test_mac_and_bmc_are_unique_across_machines(api: Api) -> None:
    make(api, "a", nics=[{"mac": "aa:bb:cc:dd:ee:01"}], bmc={"address": "10.0.0.1"})
    err = error(api.operator.post(M, json=node("b", nics=[{"mac": "AA:BB:CC:DD:EE:01"}])), 409)
    assert "aa:bb:cc:dd:ee:01" in err["message"] and "a" in err["hint"]
    err = error(api.operator.post(M, json=node("b", bmc={"address": "10.0.0.1"})), 409)
    assert "10.0.0.1:623" in err["message"]
    make(api, "b", bmc={"address": "10.0.0.1", "port": 624})
    error(api.operator.post(M, json=node("a")), 409)


def test_placement_overlap_is_409_and_overflow_422(api: Api) -> None:
    rack(api, u_height=10)
    make(api, "a", rack="r1", u_position=1, u_height=2)
    make(api, "b", rack="r1", u_position=6, u_height=1)
    err = error(api.operator.post(M, json=node("c", rack="r1", u_position=2, u_height=2)), 409)
    assert "overlaps machine a" in err["message"]
    assert err["hint"] == "free spaces for 2U in r1: U3-U5, U7-U10"
    err = error(api.operator.post(M, json=node("c", rack="r1", u_position=9, u_height=4)), 422)
    assert "does not fit" in err["message"] and "1 to 7" in err["hint"]
    # Moving a machine by one U may overlap only its own old slot.
    r = api.operator.patch(f"{M}/a", json={"u_position": 2})
    assert r.status_code == 200, r.text
    error(api.operator.patch(f"{M}/a", json={"u_height": 5}), 409)
    error(api.operator.patch(f"{M}/b", json={"u_position": 10, "u_height": 2}), 422)
    # Leaving the rack frees the slot.
    r = api.operator.patch(f"{M}/a", json={"rack": None})
    assert r.json()["rack"] is None and r.json()["u_position"] is None
    make(api, "c", rack="r1", u_position=1, u_height=5)


def test_patch_fields_nics_and_bmc(api: Api, services: Services) -> None:
    make(
        api,
        nics=[{"mac": "aa:00:00:00:00:01", "pxe": True}, {"mac": "aa:00:00:00:00:02"}],
        bmc={"address": "10.1.1.1", "username": "admin", "password": "first"},
    )

    def secret() -> str | None:
        with services.db.read_session() as s:
            token = s.exec(select(Bmc.secret_encrypted)).one()
        return None if token is None else services.secrets.decrypt(token)

    r = api.operator.patch(f"{M}/n1", json={"tags": ["x"], "bmc": {"username": "root"}})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["x"] and r.json()["bmc"]["username"] == "root"
    assert secret() == "first"  # password untouched when not given
    r = api.operator.patch(f"{M}/n1", json={"bmc": {"password": "second"}})
    assert r.json()["bmc"]["password_set"] is True and secret() == "second"
    r = api.operator.patch(f"{M}/n1", json={"nics": [{"mac": "aa:00:00:00:00:02", "pxe": True}]})
    assert [(n["mac"], n["pxe"]) for n in r.json()["nics"]] == [("aa:00:00:00:00:02", True)]
    with services.db.read_session() as s:
        assert s.exec(select(Nic.mac)).all() == ["aa:00:00:00:00:02"]
    make(api, "other", nics=[{"mac": "aa:00:00:00:00:01"}])  # the dropped MAC is free again
    r = api.operator.patch(f"{M}/n1", json={"name": "n2", "bmc": None})
    assert r.json()["name"] == "n2" and r.json()["bmc"] is None
    with services.db.read_session() as s:
        assert s.exec(select(Bmc)).all() == []
    error(api.operator.patch(f"{M}/n2", json={"name": None}), 422)
    error(api.operator.patch(f"{M}/n2", json={"name": "other"}), 409)
    error(api.operator.patch(f"{M}/n2", json={"state": "active"}), 422)
    error(api.operator.patch(f"{M}/ghost", json={"tags": []}), 404)
    audit = api.ci.get("/api/v1/events", params={"kind": "audit", "machine": "n2"}).json()
    assert audit[0]["details"] == {"fields": ["bmc", "name"]}
    # Events from before the rename still come up under the new name.
    history = api.ci.get("/api/v1/events", params={"machine": "n2", "order": "asc"}).json()
    assert [(e["machine"], e["event"]) for e in history][:2] == [("n1", "enroll"), ("n1", "update")]


def test_events_drive_the_lifecycle(api: Api) -> None:
    make(api)
    r = api.operator.post(f"{M}/n1/events", json={"event": "manage", "reason": "disk swap"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "maintenance" and r.json()["maintenance_reason"] == "disk swap"
    r = api.operator.post(f"{M}/n1/events", json={"event": "provide"})
    assert r.json()["state"] == "available"
    err = error(api.operator.post(f"{M}/n1/events", json={"event": "provide"}), 409)
    assert err["code"] == "invalid_transition" and "manage, retire" in err["hint"]
    error(api.operator.post(f"{M}/n1/events", json={"event": "ready"}), 422)
    error(api.operator.post(f"{M}/n1/events", json={"event": "manage", "x": 1}), 422)
    assert api.ci.post(f"{M}/n1/events", json={"event": "manage"}).status_code == 403
    error(api.operator.post(f"{M}/ghost/events", json={"event": "manage"}), 404)
    events = api.ci.get("/api/v1/events", params={"machine": "n1", "kind": "transition"}).json()
    assert [e["event"] for e in events] == ["provide", "manage", "enroll"]
    assert events[1]["message"] == "disk swap" and events[1]["request_id"]


def test_request_ids_are_echoed_generated_and_recorded(api: Api) -> None:
    make(api)
    r = api.operator.post(
        f"{M}/n1/events", json={"event": "manage"}, headers={"X-Request-ID": "ci-run-42"}
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "ci-run-42"
    generated = api.ci.get(f"{M}/n1").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert api.ci.get(f"{M}/ghost").headers["x-request-id"]  # errors carry one too
    for bad in (b"x" * 65, b"a b", b"<script>", "é".encode()):
        got = api.ci.get(f"{M}/n1", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert len(got) == 32 and int(got, 16) >= 0, (bad, got)  # replaced by one of ours
    events = api.ci.get("/api/v1/events", params={"machine": "n1", "event": "manage"}).json()
    assert events[0]["request_id"] == "ci-run-42"


def test_delete_only_at_rest_and_unlocked(api: Api, services: Services) -> None:
    make(api, nics=[{"mac": "aa:00:00:00:00:01"}], bmc={"address": "10.0.0.9"})
    api.operator.post(f"{M}/n1/events", json={"event": "inspect"})
    err = error(api.operator.delete(f"{M}/n1"), 409)
    assert "inspecting" in err["message"] and "wait" in err["hint"]
    with services.db.transaction() as s:
        machine = s.exec(select(Machine)).one()
    # inspecting -> inspect_failed is the reaper's job; drive it directly for the test.
    with services.db.transaction() as s:
        m = s.exec(select(Machine)).one()
        lifecycle.advance(s, m, lifecycle.Ev.FAIL, actor="test", reason="timeout")
    assert machine.id is not None
    assert locks.try_acquire(services.db, machine.id, "deploy:host-b", ttl_s=60)
    err = error(api.operator.delete(f"{M}/n1"), 409)
    assert err["code"] == "machine_locked" and "deploy:host-b" in err["message"]
    error(api.operator.post(f"{M}/n1/events", json={"event": "retire"}), 409)
    locks.release(services.db, machine.id, "deploy:host-b")
    assert api.operator.delete(f"{M}/n1").status_code == 204
    error(api.ci.get(f"{M}/n1"), 404)
    with services.db.read_session() as s:
        assert s.exec(select(Nic)).all() == [] and s.exec(select(Bmc)).all() == []
    make(api, nics=[{"mac": "aa:00:00:00:00:01"}], bmc={"address": "10.0.0.9"})
    kinds = [e["event"] for e in api.ci.get("/api/v1/events", params={"order": "asc"}).json()]
    assert kinds == ["enroll", "inspect", "fail", "delete", "enroll"]


def test_delete_by_state(api: Api, services: Services) -> None:
    make(api)
    api.operator.post(f"{M}/n1/events", json={"event": "manage"})
    api.operator.post(f"{M}/n1/events", json={"event": "provide"})
    assert api.operator.delete(f"{M}/n1").status_code == 204
    make(api)
    api.operator.post(f"{M}/n1/events", json={"event": "retire"})
    assert api.operator.delete(f"{M}/n1").status_code == 204
    make(api)
    with services.db.transaction() as s:
        m = s.exec(select(Machine)).one()
        for ev in ("inspect", "done", "allocate", "deploy", "booted", "ready"):
            lifecycle.advance(s, m, lifecycle.Ev(ev), actor="test")
    err = error(api.operator.delete(f"{M}/n1"), 409)
    assert "is active" in err["message"] and '"retire"' in err["hint"]


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", M, {"name": 1}),
        ("POST", M, []),
        ("POST", M, {"name": "n", "nics": "aa"}),
        ("POST", M, {"name": "n", "bmc": {"password": 5}}),
        ("POST", M, {"name": "n", "disks": [{"a": {"b": 1}}]}),
        ("POST", M, {"name": "n", "ram_mib": 10**30}),
        ("POST", M, {"name": "n", "u_position": 10**30, "rack": "r"}),
        ("PATCH", f"{M}/n0", {"nics": [{"mac": "aa:aa:aa:aa:aa:aa", "switch_port": "x"}]}),
        ("PATCH", f"{M}/n0", {"nics": [{"mac": "aa:aa:aa:aa:aa:aa", "switch_port": "sw/9"}]}),
        ("PATCH", f"{M}/n0", {"bmc": {"credential_set": "nope"}}),
        ("PATCH", f"{M}/n0", {"bmc": {"driver": "redfish"}}),
        ("PATCH", f"{M}/n0", {"u_height": None}),
        ("GET", f"{M}/a%00b", None),
        ("GET", f"{M}?state=%00", None),
        ("GET", f"{M}/{'x' * 500}", None),
        ("POST", f"{M}/n0/events", {"event": None}),
    ],
)
def test_no_500_for_bad_input(api: Api, method: str, path: str, body: Any) -> None:
    make(api, "n0")
    r = api.operator.request(method, path, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["hint"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "n", "disks": [{"size": NaN}]}',
        b'{"name": "n", "cpus": Infinity}',
        b'{"name": "n", "disks": [{"size": 1e999}]}',
        b"\xff\xfe",
        b'{"name": "n"',
    ],
)
def test_no_500_for_raw_bodies(api: Api, raw: bytes) -> None:
    r = api.operator.post(M, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


# --- CLI, against a live server on loopback -------------------------------------------


@pytest.fixture
def live(api: Api, services: Services) -> Iterator[dict[str, str]]:
    """A real uvicorn on 127.0.0.1 in a thread; yields the CLI environment (operator token)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(services), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start within 10 s"
    try:
        yield {
            "PROVISIOND_URL": f"http://127.0.0.1:{port}",
            "PROVISIOND_TOKEN": api.tokens["operator"],
            "COLUMNS": "200",
        }
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_cli_machines_list_and_show(api: Api, live: dict[str, str]) -> None:
    rack(api)
    make(
        api,
        "web1",
        rack="r1",
        u_position=2,
        u_height=2,
        tags=["gpu"],
        nics=[{"mac": "aa:00:00:00:00:01", "pxe": True}],
        bmc={"address": "10.0.0.5", "password": "x"},
    )
    make(api, "web2")
    api.operator.post(f"{M}/web2/events", json={"event": "manage"})
    runner = CliRunner()
    r = runner.invoke(cli_app, ["machines", "list", "--json"], env=live)
    assert r.exit_code == 0, r.output
    assert [m["name"] for m in json.loads(r.stdout)] == ["web1", "web2"]
    r = runner.invoke(cli_app, ["machines", "list", "--state", "maintenance", "--json"], env=live)
    assert [m["name"] for m in json.loads(r.stdout)] == ["web2"]
    r = runner.invoke(cli_app, ["machines", "list"], env=live)
    assert (
        r.exit_code == 0
        and "web1" in r.stdout
        and "U2-U3" in r.stdout
        and "maintenance" in r.stdout
    )
    r = runner.invoke(cli_app, ["machines", "show", "web1"], env=live)
    assert r.exit_code == 0, r.output
    assert "aa:00:00:00:00:01" in r.stdout and "password set" in r.stdout
    r = runner.invoke(cli_app, ["machines", "show", "web1", "--json"], env=live)
    assert json.loads(r.stdout)["bmc"]["password_set"] is True


def test_cli_errors_exit_non_zero_with_hint(live: dict[str, str]) -> None:
    runner = CliRunner()
    r = runner.invoke(cli_app, ["machines", "show", "ghost"], env=live)
    assert r.exit_code == 1
    assert "no machine named 'ghost'" in r.stderr and "hint:" in r.stderr
    r = runner.invoke(cli_app, ["machines", "list", "--state", "bogus"], env=live)
    assert r.exit_code == 1 and "states:" in r.stderr
    r = runner.invoke(cli_app, ["machines", "list"], env={**live, "PROVISIOND_TOKEN": "junk"})
    assert r.exit_code == 1 and "token is not known" in r.stderr
