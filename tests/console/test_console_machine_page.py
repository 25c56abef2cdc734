"""The console's machine page: identity, hardware, NICs and LLDP, BMC (never its
password), allocation, the deploy timeline, deployments, events, actions, statements."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from fastapi.testclient import TestClient

from provisiond import events
from provisiond.console.actions import ACTIONS
from provisiond.container import Services
from provisiond.deploy.records import mark_phase
from provisiond.deploy.telemetry import phase_table
from provisiond.events import EventKind
from provisiond.models import (
    Allocation,
    Bmc,
    Deployment,
    Image,
    Machine,
    Nic,
    Rack,
    Switch,
    SwitchPort,
)
from tests.support.allocations import token_id
from tests.support.console import svgs
from tests.support.statements import counting

Clients = dict[str, TestClient]
PASSWORD = "Sup3r-Secret-BMC-pw"
HOSTILE = "<script>alert(1)</script>"
CREATED = datetime(2024, 1, 1, tzinfo=UTC)
#: A deploy's phases, seconds from its power-cycle (deploy_requested comes before it).
PHASES = {
    "deploy_requested": -2.5,
    "power_cycle": 0.0,
    "dhcp_discover": 4.25,
    "ipxe_script": 9.0,
    "kernel": 11.5,
    "initrd": 19.75,
    "os_callback": 58.0,
    "agent_install": 59.5,
    "agent_heartbeat": 88.0,
}


def add_machine(
    services: Services,
    name: str,
    *,
    state: str = "active",
    nics: int = 1,
    bmc: bool = True,
    **columns: Any,
) -> int:
    """A machine in rack r-NAME with ``nics`` NICs cabled to sw-NAME, and a BMC."""
    with services.db.transaction() as s:
        rack = Rack(name=f"r-{name}")
        switch = Switch(name=f"sw-{name}")
        s.add_all([rack, switch])
        s.flush()
        machine = Machine(
            name=name, state=state, rack_id=rack.id, u_position=5, created_at=CREATED, **columns
        )
        s.add(machine)
        s.flush()
        assert machine.id is not None and switch.id is not None
        for i in range(nics):
            port = SwitchPort(switch_id=switch.id, name=f"swp{i + 1}")
            s.add(port)
            s.flush()
            seen_port = f"swp{i + 1}" if i % 2 == 0 else f"swp{i + 40}"
            s.add(
                Nic(
                    machine_id=machine.id,
                    mac=f"52:54:{machine.id:02x}:00:00:{i:02x}",
                    name=f"eno{i + 1}",
                    pxe=i == 0,
                    ip_address=f"10.0.{machine.id}.{i + 10}",
                    switch_port_id=port.id,
                    lldp={
                        "system_name": f"tor-{name}",
                        "port_id": seen_port,
                        "chassis_id": "44:38:39:00:00:01",
                        "port_description": f"{name} nic",
                    },
                    cabling="pass" if i % 2 == 0 else "fail",
                )
            )
        if bmc:
            s.add(
                Bmc(
                    machine_id=machine.id,
                    driver="ipmi",
                    address="192.0.2.7",
                    port=6230,
                    username="bmc-admin",
                    secret_encrypted=services.secrets.encrypt(PASSWORD),
                )
            )
        return machine.id


def add_events(services: Services, machine_id: int, name: str, count: int) -> None:
    with services.db.transaction() as s:
        for i in range(count):
            events.record(
                s,
                EventKind.TRANSITION,
                "done",
                flush=False,
                machine_id=machine_id,
                machine_name=name,
                from_state="inspecting",
                to_state="available",
                actor="engine",
                message=f"event {i:02d}",
                at=CREATED + timedelta(minutes=i),
            )


def add_deployment(
    services: Services,
    machine_id: int,
    *,
    origin: datetime,
    phases: dict[str, float],
    outcome: str = "active",
    reason: str = "",
    image: str | None = None,
    finished: datetime | None = None,
) -> Deployment:
    with services.db.transaction() as s:
        image_id = None
        if image:
            row = Image(name=image, kernel="vmlinuz", initrd="initrd.img")
            s.add(row)
            s.flush()
            image_id = row.id
        record = Deployment(
            machine_id=machine_id,
            kind="deploy",
            image_id=image_id,
            attempt=2,
            started_at=origin - timedelta(seconds=3),
            outcome=outcome,
            failure_reason=reason,
        )
        for phase, seconds in phases.items():
            assert mark_phase(record, phase, origin + timedelta(seconds=seconds))
        if outcome:
            last = max(phases.values())
            record.finished_at = finished or origin + timedelta(seconds=last)
        s.add(record)
        s.flush()
        s.expunge(record)
        return record


def page(client: TestClient, name: str) -> str:
    r = client.get(f"/ui/machines/{name}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return str(r.text)


def section(html: str, ident: str) -> str:
    found = re.search(rf'<section[^>]* id="{ident}".*?</section>', html, flags=re.S)
    assert found, f"no section {ident}"
    return found.group(0)


def text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def timeline(html: str) -> Element:
    (svg,) = svgs(html)
    assert svg.get("class") == "timeline"
    return svg


def phases_of(svg: Element) -> list[dict[str, Any]]:
    out = []
    for g in svg.iter("g"):
        if g.get("class") != "phase":
            continue
        rect = g.find("rect")
        assert rect is not None
        out.append(
            {
                "phase": g.get("data-phase"),
                "seconds": float(g.get("data-seconds") or "nan"),
                "x": float(rect.get("x", "0")),
                "width": float(rect.get("width", "0")),
                "texts": ["".join(t.itertext()) for t in g.iter("text")],
            }
        )
    return out


def test_sections_show_the_machine(signed_in: Clients, services: Services) -> None:
    mid = add_machine(
        services,
        "node1",
        nics=2,
        serial="SN-42",
        vendor="Dell Inc.",
        model="R640",
        cpus=16,
        ram_mib=65536,
        power_state="on",
        maintenance_reason="fan swap",
        disks=[{"name": "sda", "size_bytes": 480103981056, "model": "SSD-X", "rotational": False}],
        last_error={"phase": "deploying", "reason": "no callback in 600 s"},
        measured_watts=241,
        measured_source="bmc",
        measured_at=datetime.now(UTC),
    )
    html = page(signed_in["operator"], "node1")
    assert 'data-live="machine:node1"' in html
    identity = text(section(html, "identity"))
    with services.db.read_session() as s:
        uuid = s.get(Machine, mid).uuid  # type: ignore[union-attr]
    for expected in (
        uuid,
        "SN-42",
        "Dell Inc. / R640",
        "r-node1 U5",
        "active since",
        "fan swap",
        "no callback in 600 s",
        "phase: deploying",
    ):
        assert expected in identity, expected
    assert re.search(r'id="power-state">on<', html)
    hardware = text(section(html, "hardware"))
    assert "16" in hardware and "65536 MiB" in hardware
    assert "sda 480.1 GB SSD-X" in hardware and "SSD" in hardware
    bmc = text(section(html, "bmc"))
    assert "ipmi" in bmc and "192.0.2.7:6230" in bmc and "bmc-admin" in bmc
    assert "241 W from the bmc" in bmc
    nics = re.findall(r'<tr data-mac="([^"]+)">(.*?)</tr>', section(html, "nics"), flags=re.S)
    assert [mac for mac, _ in nics] == [f"52:54:{mid:02x}:00:00:00", f"52:54:{mid:02x}:00:00:01"]
    first, second = (text(row) for _, row in nics)
    assert f"eno1 yes 10.0.{mid}.10 sw-node1/swp1 tor-node1/swp1" in first
    assert "pass" in first
    assert "sw-node1/swp2 tor-node1/swp41" in second and "fail" in second
    assert "Not allocated" in section(html, "allocation")
    assert "Never deployed" in section(html, "deploy")


def test_the_bmc_password_never_reaches_the_page(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1")
    with services.db.read_session() as s:
        blob = s.exec(Bmc.__table__.select().where(Bmc.machine_id == mid)).one().secret_encrypted  # type: ignore[attr-defined]
    assert blob and services.secrets.decrypt(blob) == PASSWORD
    for role in ("admin", "operator", "ci"):
        html = page(signed_in[role], "node1")
        assert "bmc-admin" in html  # the BMC section is there
        assert PASSWORD not in html
        assert blob not in html and blob[:24] not in html


def test_timeline_has_the_deploys_phases_in_order(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1")
    origin = datetime.now(UTC) - timedelta(hours=1)
    record = add_deployment(
        services,
        mid,
        origin=origin,
        phases=PHASES,
        image="debian-12",
        finished=origin + timedelta(seconds=90),
    )
    with services.db.transaction() as s:  # a disk deploy's figures, as disk_deploy keeps them
        row = s.get(Deployment, record.id)
        assert row is not None
        row.phases = {
            **row.phases,
            "root_disk": {"disk": "/dev/sda", "size_bytes": 480103981056, "why": "smallest fit"},
            "image_write": {"bytes": 2147483648, "seconds": 14.2, "mb_s": 151.2, "resumed": True},
        }
    html = page(signed_in["ci"], "node1")
    svg = timeline(html)
    assert svg.get("data-outcome") == "succeeded"
    drawn = phases_of(svg)
    expected = sorted(PHASES.items(), key=lambda item: item[1])
    assert [d["phase"] for d in drawn] == [name for name, _ in expected]
    assert [d["seconds"] for d in drawn] == pytest.approx([s for _, s in expected])
    assert [(p, s) for p, s in phase_table(record)] == [(d["phase"], d["seconds"]) for d in drawn]
    # each bar runs from its phase to the next, on one scale; the last to the finish
    scale = (drawn[-1]["x"] - drawn[0]["x"]) / (expected[-1][1] - expected[0][1])
    for here, following in itertools.pairwise(drawn):
        assert following["x"] == pytest.approx(here["x"] + here["width"], abs=0.2)
        assert here["width"] == pytest.approx(
            (following["seconds"] - here["seconds"]) * scale, abs=0.2
        )
    assert drawn[-1]["width"] == pytest.approx(2.0 * scale, abs=0.2)  # 88 s -> finished at 90 s
    for d in drawn:
        assert d["texts"][0] == d["phase"]
        assert d["texts"][1].startswith(f"{d['seconds']:.1f} s")
    ticks = [t.text for g in svg.iter("g") if g.get("class") == "axis" for t in g.iter("text")]
    values = [int(str(t).removesuffix("s")) for t in ticks]
    assert values == sorted(values) and values[0] <= -2.5 + 10 and values[-1] >= 80
    assert all(t and t.endswith("s") for t in ticks)
    deploy = text(section(html, "deploy"))
    for expected_text in (
        "deploy",
        "debian-12",
        "Attempt 2",
        "/dev/sda (480.1 GB): smallest fit",
        "2.1 GB in 14.2 s (151.2 MB/s), resumed",
    ):
        assert expected_text in deploy, expected_text


def test_a_running_deploy_reaches_now(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1", state="deploying")
    origin = datetime.now(UTC) - timedelta(seconds=100)
    add_deployment(
        services,
        mid,
        origin=origin,
        outcome="",
        phases={"power_cycle": 0.0, "dhcp_discover": 5.0, "kernel": 40.0},
    )
    svg = timeline(page(signed_in["operator"], "node1"))
    assert svg.get("data-outcome") == "running"
    drawn = phases_of(svg)
    assert [d["phase"] for d in drawn] == ["power_cycle", "dhcp_discover", "kernel"]
    scale = drawn[0]["width"] / 5.0
    assert drawn[-1]["width"] / scale == pytest.approx(60.0, abs=5.0)  # kernel at 40 s, now ~100 s
    assert not [g for g in svg.iter("g") if g.get("class") == "failure"]


def test_a_failed_deploy_ends_in_its_reason(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1", state="deploy_failed")
    origin = datetime.now(UTC) - timedelta(minutes=30)
    reason = f"no OS callback within 600 s {HOSTILE} & more"
    add_deployment(
        services,
        mid,
        origin=origin,
        outcome="failed",
        reason=reason,
        phases={"power_cycle": 0.0, "dhcp_discover": 3.0, "ipxe_script": 7.0},
        finished=origin + timedelta(seconds=607),
    )
    html = page(signed_in["operator"], "node1")
    svg = timeline(html)
    assert svg.get("data-outcome") == "failed"
    (failure,) = [g for g in svg.iter("g") if g.get("class") == "failure"]
    assert reason in "".join(failure.itertext())
    assert float(failure.get("data-seconds", "0")) == pytest.approx(607.0)
    assert any(c.get("fill") == "#c62828" for c in failure.iter("circle"))
    assert HOSTILE not in html
    assert reason in text(section(html, "deploy"))
    recent = text(section(html, "deployments"))
    assert (
        recent.startswith("Recent deployments") and "failed deploy" in recent and reason in recent
    )


def test_the_last_five_deployments(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1")
    base = datetime.now(UTC) - timedelta(days=1)
    uuids = []
    for i in range(7):
        record = add_deployment(
            services,
            mid,
            origin=base + timedelta(hours=i),
            phases={"power_cycle": 0.0, "os_callback": 30.0 + i},
            outcome="failed" if i % 2 else "active",
            reason=f"reason {i}" if i % 2 else "",
        )
        uuids.append(record.uuid)
    html = section(page(signed_in["operator"], "node1"), "deployments")
    rows = re.findall(r'<tr data-deployment="([^"]+)">(.*?)</tr>', html, flags=re.S)
    assert [u for u, _ in rows] == uuids[::-1][:5]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S) for _, row in rows]
    assert [c[0] for c in cells] == ["succeeded", "failed", "succeeded", "failed", "succeeded"]
    assert [c[1] for c in cells] == ["deploy"] * 5
    # started 3 s before the power-cycle, finished at the last phase (30 + i s)
    assert [c[4] for c in cells] == [f"{33.0 + i:.1f} s" for i in (6, 5, 4, 3, 2)]
    assert [c[5] for c in cells] == ["", "reason 5", "", "reason 3", ""]


def test_events_newest_fifty_printed_literally(signed_in: Clients, services: Services) -> None:
    mid = add_machine(services, "node1")
    add_events(services, mid, "node1", 60)
    with services.db.transaction() as s:
        events.record(
            s,
            EventKind.AUDIT,
            "edit",
            machine_id=mid,
            machine_name="node1",
            message=f"  spaced   {HOSTILE} 'q' \"dq\"",
            at=CREATED + timedelta(hours=2),
        )
    html = page(signed_in["operator"], "node1")
    rows = re.findall(
        r'<tr class="event event-(\w+)">(.*?)</tr>', section(html, "events"), flags=re.S
    )
    assert len(rows) == 50
    messages = [
        unescape(re.findall(r'<td class="message">(.*?)</td>', r, flags=re.S)[0]) for _, r in rows
    ]
    assert messages[0] == f"  spaced   {HOSTILE} 'q' \"dq\""
    assert messages[1:] == [f"event {i:02d}" for i in range(59, 10, -1)]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[1][1], flags=re.S)
    assert cells[0] == (CREATED + timedelta(minutes=59)).strftime("%Y-%m-%d %H:%M:%S")
    assert cells[1:5] == ["transition", "done", "inspecting → available", "engine"]
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_hostile_hold_reason_and_tag_are_escaped(signed_in: Clients, services: Services) -> None:
    add_machine(
        services,
        "node1",
        hold_reason=f"cabling {HOSTILE}",
        tags=[HOSTILE, "ok"],
        maintenance_reason='"><img src=x onerror=alert(1)>',
    )
    html = page(signed_in["operator"], "node1")
    assert HOSTILE not in html and "<img" not in html
    identity = text(section(html, "identity"))
    assert f"cabling {HOSTILE}" in identity and HOSTILE in identity
    assert '"><img src=x onerror=alert(1)>' in identity


@pytest.mark.parametrize(
    ("state", "bmc", "expected"),
    [
        ("active", True, ["power-on", "power-off", "power-cycle", "release", "maintenance-on"]),
        ("maintenance", False, ["inspect", "maintenance-off"]),
        ("enrolled", True, ["power-on", "power-off", "power-cycle", "inspect", "maintenance-on"]),
        ("deploying", False, ["release"]),
        ("available", False, ["maintenance-on"]),
        ("retired", False, []),
    ],
)
def test_actions_fit_the_state(
    signed_in: Clients, services: Services, state: str, bmc: bool, expected: list[str]
) -> None:
    add_machine(services, "node1", state=state, bmc=bmc)
    for role in ("operator", "admin"):
        actions = section(page(signed_in[role], "node1"), "actions")
        found = re.findall(r'<a class="button" id="action-([\w-]+)" href="([^"]+)"', actions)
        assert [name for name, _ in found] == expected
        assert all(href == f"/ui/machines/node1/actions/{name}" for name, href in found)
        assert all(name in ACTIONS for name, _ in found)
    for name in expected:  # each link's confirmation page exists
        r = signed_in["operator"].get(f"/ui/machines/node1/actions/{name}")
        assert r.status_code == 200 and ACTIONS[name].label in r.text


def test_ci_sees_no_actions_and_no_other_tokens_allocation(
    signed_in: Clients, services: Services
) -> None:
    theirs, mine = add_machine(services, "theirs"), add_machine(services, "mine")
    with services.db.transaction() as s:
        other = Allocation(
            owner_token_id=token_id(services.db, "test-operator"),
            state="ready",
            machine_id=theirs,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        own = Allocation(
            owner_token_id=token_id(services.db, "test-ci"), state="deploying", machine_id=mine
        )
        s.add_all([other, own])
        s.flush()
        other_uuid, own_uuid = other.uuid, own.uuid
    html = page(signed_in["ci"], "theirs")
    assert 'id="actions"' not in html and "/actions/" not in html
    assert other_uuid not in html and "test-operator" not in html
    assert "Leased by another token" in section(html, "allocation")
    html = page(signed_in["ci"], "mine")
    assert 'id="actions"' not in html
    allocation = text(section(html, "allocation"))
    assert own_uuid in allocation and "test-ci" in allocation and "deploying" in allocation
    html = page(signed_in["operator"], "theirs")
    allocation = text(section(html, "allocation"))
    assert other_uuid in allocation and "test-operator" in allocation and "ends in" in allocation


def test_an_unknown_machine_is_a_404_page(signed_in: Clients) -> None:
    for path in ("/ui/machines/nope", "/ui/machines/nope/actions/power-on"):
        r = signed_in["operator"].get(path)
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("text/html")
        assert "no machine named &#39;nope&#39;" in r.text
        assert "Hint: the machine list at /ui/machines" in r.text


def test_statements_do_not_grow_with_nics_or_events(signed_in: Clients, services: Services) -> None:
    small = add_machine(services, "small", nics=1)
    big = add_machine(services, "big", nics=6)
    add_events(services, small, "small", 5)
    add_events(services, big, "big", 60)
    now = datetime.now(UTC)
    add_deployment(services, small, origin=now, phases={"power_cycle": 0.0}, outcome="")
    for i in range(6):
        add_deployment(
            services,
            big,
            origin=now - timedelta(hours=i),
            image=f"img{i}",
            phases=PHASES,
            outcome="failed",
            reason="x",
        )
    with services.db.transaction() as s:
        s.add(
            Allocation(
                owner_token_id=token_id(services.db, "test-ci"), state="ready", machine_id=big
            )
        )
    for role in ("operator", "ci"):
        counts = {}
        for name, nics, rows in (("small", 1, 5), ("big", 6, 50)):
            page(signed_in[role], name)  # warm-up
            with counting(services.db) as seen:
                html = page(signed_in[role], name)
            assert html.count("<tr data-mac=") == nics
            assert html.count('<tr class="event event-') == rows
            counts[name] = len(seen)
        assert counts["small"] == counts["big"], counts
