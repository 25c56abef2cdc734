"""The console's racks page (/ui/racks, /ui/racks/NAME): each rack's front elevation as
SVG, read back element by element against what was seeded; power bars; owners as each
role may see them; escaping; one 404 page; a fixed number of statements."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.auth import create_token
from provisiond.console.render import STATE_COLOURS
from provisiond.container import Services
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, Machine, Pdu, Rack, Switch, utcnow
from tests.console.test_console_overview import HOSTILE, Node, add_allocation, parse
from tests.support.allocations import add_machines, fire
from tests.support.console import svgs
from tests.support.statements import counting

#: name -> (u_position, u_height) of the machines drawn in rack r1
DRAWN = {"m-a": (1, 1), "m-b": (2, 2), "m-c": (10, 4), "m-d": (41, 1)}


def rack(services: Services, name: str, **fields: Any) -> int:
    with services.db.transaction() as session:
        row = Rack(name=name, **fields)
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


def devices(services: Services, model: type[Switch] | type[Pdu], *specs: dict[str, Any]) -> None:
    with services.db.transaction() as session:
        for spec in specs:
            session.add(model(**spec))


def get(client: TestClient, path: str = "/ui/racks") -> tuple[str, Node, dict[str, Element]]:
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    elevations = {s.get("data-rack", ""): s for s in svgs(r.text) if s.get("class") == "elevation"}
    return r.text, parse(r.text), elevations


def drawn(svg: Element) -> dict[str, Element]:
    return {g.get("data-name", ""): g for g in svg.iter("g") if "device" in g.get("class", "")}


def links(svg: Element) -> dict[str, str]:
    """device name -> the href of the link around it."""
    return {g.get("data-name", ""): a.get("href", "") for a in svg.iter("a") for g in a.iter("g")}


def card(doc: Node, name: str) -> Node:
    return doc.one("section", cls="rack", data_rack=name)


@pytest.fixture
def r1(services: Services) -> int:
    """Rack r1 (42 U): four machines, a switch, a PDU in U, a zero-U PDU, and what
    cannot be drawn: a machine with no U, one past the top, one on another's U."""
    rid = rack(services, "r1", power_budget_watts=2000, measured_watts=1900, measured_at=utcnow())
    specs = [
        {"name": n, "rack_id": rid, "u_position": u, "u_height": h} for n, (u, h) in DRAWN.items()
    ]
    specs += [
        {"name": "m-nowhere", "rack_id": rid},
        {"name": "m-past-top", "rack_id": rid, "u_position": 42, "u_height": 2},
        {"name": "m-clash", "rack_id": rid, "u_position": 3, "u_height": 1},
    ]
    add_machines(services.db, specs)
    fire(services.db, "m-b", Ev.DEPLOY, Ev.BOOTED, Ev.READY)
    fire(services.db, "m-c", Ev.DEPLOY, Ev.FAIL, reason="boom")
    devices(services, Switch, {"name": "sw-top", "rack_id": rid, "u_position": 42, "u_height": 1})
    devices(
        services,
        Pdu,
        {"name": "pdu-u", "rack_id": rid, "u_position": 20, "u_height": 2},
        {"name": "pdu-zero", "rack_id": rid, "u_height": 0},
    )
    return rid


def test_elevation_matches_the_seeded_rack(
    services: Services, signed_in: dict[str, TestClient], r1: int
) -> None:
    html, doc, elevations = get(signed_in["operator"], "/ui/racks/r1")
    svg = elevations["r1"]
    assert svg.get("data-u-height") == "42"
    shown = drawn(svg)
    assert set(shown) == {*DRAWN, "sw-top", "pdu-u"}
    with services.db.read_session() as session:
        states = dict(session.exec(select(Machine.name, Machine.state)).all())
    for name, (u, h) in DRAWN.items():
        g = shown[name]
        assert (g.get("data-u"), g.get("data-height")) == (str(u), str(h)), name
        assert g.get("class") == "device machine"
        assert g.get("data-state") == states[name]
        rect = g.find("rect")
        assert rect is not None and rect.get("fill") == STATE_COLOURS[states[name]]
        assert next(t.text for t in g.iter("text")) == name
    assert states["m-b"] == "active" and states["m-c"] == "deploy_failed"
    assert (shown["sw-top"].get("class"), shown["sw-top"].get("data-u")) == ("device switch", "42")
    assert (shown["pdu-u"].get("data-u"), shown["pdu-u"].get("data-height")) == ("20", "2")
    assert links(svg) == {name: f"/ui/machines/{name}" for name in DRAWN}

    occupied = {
        u
        for g in shown.values()
        for u in range(
            int(g.get("data-u", 0)), int(g.get("data-u", 0)) + int(g.get("data-height", 0))
        )
    }
    empty = [int(r.get("data-u", 0)) for r in svg.iter("rect") if r.get("class") == "empty-u"]
    assert len(occupied) == sum(h for _, h in DRAWN.values()) + 1 + 2 == 11
    assert len(empty) == 42 - len(occupied) == len(set(empty))
    assert set(empty) | occupied == set(range(1, 43)) and not set(empty) & occupied
    # U numbers down the side: 42 at the top, 1 at the bottom
    labels = [t for t in svg.iter("text") if t.get("class") == "u-label"]
    assert [t.text for t in labels] == [str(u) for u in range(42, 0, -1)]
    assert float(labels[0].get("y", 0)) < float(labels[-1].get("y", 0))

    here = card(doc, "r1")
    assert [li.attrs["data-name"] for li in here.all("li", cls="zero-u-pdu")] == ["pdu-zero"]
    assert {li.attrs["data-name"] for li in here.all("li", cls="not-placed")} == {
        "m-nowhere",
        "m-past-top",
    }
    (clash,) = here.all("li", cls="conflict")
    assert clash.attrs["data-name"] == "m-clash" and "overlaps m-b" in clash.text
    assert "outside this rack" in here.one("li", data_name="m-past-top").text
    legend = {
        s.words.rsplit(" ", 1)[0]: int(s.words.rsplit(" ", 1)[1])
        for s in here.all("span", cls="legend-item")
    }
    assert legend == {"available": 2, "active": 1, "deploy_failed": 1, "switch": 1, "pdu": 1}
    assert html.count("<script") == 1


def test_owners_as_each_role_sees_them(
    services: Services, signed_in: dict[str, TestClient], r1: int
) -> None:
    add_allocation(services, "test-ci", "ready", machine="m-b", expires_in_s=600)
    add_allocation(services, "test-operator", "deploying", machine="m-a")
    add_allocation(services, "test-operator", "released", machine="m-d")  # over: no owner

    def status(svg: Element, name: str) -> str:
        texts = [t.text or "" for t in drawn(svg)[name].iter("text")]
        return texts[1] if len(texts) > 1 else ""

    _, _, elevations = get(signed_in["admin"])
    svg = elevations["r1"]
    assert status(svg, "m-b") == "unknown · test-ci"
    assert status(svg, "m-a") == "unknown · test-operator"
    assert status(svg, "m-d") == "unknown"
    _, _, elevations = get(signed_in["ci"])
    svg = elevations["r1"]
    assert status(svg, "m-b") == "unknown · test-ci"
    assert status(svg, "m-a") == "unknown · leased"
    assert "test-operator" not in "".join(svg.itertext())


def test_power_bars(services: Services, signed_in: dict[str, TestClient]) -> None:
    rack(services, "a-ok", power_budget_watts=2000, measured_watts=1000)
    rack(services, "b-warn", power_budget_watts=2000, measured_watts=1900)
    rack(services, "c-over", power_budget_watts=2000, measured_watts=2500, budget_status="over_100")
    rack(services, "d-unread", power_budget_watts=2000)
    rack(services, "e-nobudget", measured_watts=300)
    _, doc, elevations = get(signed_in["ci"])
    assert list(elevations) == ["a-ok", "b-warn", "c-over", "d-unread", "e-nobudget"]
    expected = {
        "a-ok": ("ok", "50", "#43a047"),
        "b-warn": ("warn", "95", "#fb8c00"),
        "c-over": ("over", "125", "#e53935"),
    }
    for name, (level, percent, colour) in expected.items():
        bar = card(doc, name).one("svg", cls="power-bar")
        used = bar.one("rect", cls="used")
        assert (bar.attrs["data-level"], bar.attrs["data-percent"], used.attrs["fill"]) == (
            level,
            percent,
            colour,
        )
        assert float(used.attrs["width"]) == pytest.approx(min(int(percent), 100) * 2.3)
    assert "over budget" in card(doc, "c-over").one("div", cls="power").words
    assert card(doc, "d-unread").one("span", cls="no-reading").text == "no reading"
    assert not card(doc, "d-unread").all("svg", cls="power-bar")
    assert card(doc, "e-nobudget").one("div", cls="power").words == "300 W · no budget"


def test_a_small_rack_and_racks_side_by_side(
    services: Services, signed_in: dict[str, TestClient]
) -> None:
    small = rack(services, "small", u_height=4)
    big = rack(services, "big")
    add_machines(
        services.db,
        [
            {"name": "s1", "rack_id": small, "u_position": 2, "u_height": 2},
            {"name": "b1", "rack_id": big, "u_position": 40, "u_height": 3},
            {"name": "loose"},  # in no rack: on neither
        ],
    )
    _, _, elevations = get(signed_in["operator"])
    assert list(elevations) == ["big", "small"]
    assert elevations["small"].get("data-u-height") == "4"
    assert set(drawn(elevations["small"])) == {"s1"} and set(drawn(elevations["big"])) == {"b1"}
    empty = sorted(
        int(r.get("data-u", 0))
        for r in elevations["small"].iter("rect")
        if r.get("class") == "empty-u"
    )
    assert empty == [1, 4]
    assert len([r for r in elevations["big"].iter("rect") if r.get("class") == "empty-u"]) == 39
    _, _, elevations = get(signed_in["operator"], "/ui/racks/small")
    assert list(elevations) == ["small"]


def test_no_racks_says_so(services: Services, signed_in: dict[str, TestClient]) -> None:
    _, doc, elevations = get(signed_in["ci"])
    assert not elevations
    assert doc.one(id="no-racks").words.startswith("No racks yet.")


def test_unknown_rack_is_a_404_page(services: Services, signed_in: dict[str, TestClient]) -> None:
    rack(services, "r1")
    r = signed_in["operator"].get("/ui/racks/" + quote("nope<b>", safe=""))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    doc = parse(r.text)
    assert doc.one(id="error").one("p", cls="message").text == "no rack named 'nope<b>'"
    assert "/ui/racks" in doc.one(id="error").one("p", cls="hint").text
    assert "<b>" not in r.text.split("<main", 1)[1]


def test_hostile_names_are_escaped(services: Services, signed_in: dict[str, TestClient]) -> None:
    rack_name = 'r<&">' + "'"
    rid = rack(services, rack_name, u_height=10)
    machine = HOSTILE[:64]
    add_machines(
        services.db,
        [
            {"name": machine, "rack_id": rid, "u_position": 3, "u_height": 2},
            {"name": "x" + HOSTILE[:40], "rack_id": rid},  # not placed, listed
        ],
    )
    devices(services, Switch, {"name": "sw<&>", "rack_id": rid, "u_position": 9})
    devices(services, Pdu, {"name": "pdu<&>", "rack_id": rid, "u_height": 0})
    with services.db.transaction() as session:
        create_token(session, name="<b>owner</b>", role="operator")
    add_allocation(services, "<b>owner</b>", "ready", machine=machine, expires_in_s=60)
    for path in ("/ui/racks", "/ui/racks/" + quote(rack_name, safe="")):
        html, doc, elevations = get(signed_in["admin"], path)
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>" not in html
        assert html.count("<script") == 1
        svg = elevations[rack_name]
        shown = drawn(svg)
        assert set(shown) == {machine, "sw<&>"}
        label, status = (t.text or "" for t in shown[machine].iter("text"))
        assert label == machine or machine.startswith(label.removesuffix("…"))
        assert status == "unknown · <b>owner</b>"
        title = shown[machine].find("title")
        assert title is not None and (title.text or "").startswith(machine + " · machine")
        assert links(svg) == {machine: "/ui/machines/" + quote(machine, safe="")}
        here = card(doc, rack_name)
        assert here.one("h2").text == rack_name
        assert here.one("li", cls="not-placed").attrs["data-name"] == "x" + HOSTILE[:40]
        assert here.one("li", cls="zero-u-pdu").text == "pdu<&>"


def _fill(services: Services, rid: int, prefix: str, count: int) -> None:
    """``count`` machines in rack ``rid`` (half leased), a switch and two PDUs."""
    names = [f"{prefix}{i:03d}" for i in range(count)]
    add_machines(
        services.db, [{"name": n, "rack_id": rid, "u_position": i + 1} for i, n in enumerate(names)]
    )
    for n in names[::2]:
        add_allocation(services, "test-ci", "ready", machine=n, expires_in_s=600)
    devices(services, Switch, {"name": f"{prefix}-sw", "rack_id": rid, "u_position": 40})
    devices(
        services,
        Pdu,
        {"name": f"{prefix}-p1", "rack_id": rid},
        {"name": f"{prefix}-p2", "rack_id": rid, "u_position": 41, "u_height": 1},
    )


@pytest.mark.parametrize("path", ["/ui/racks", "/ui/racks/a"])
def test_statements_do_not_grow(
    services: Services, signed_in: dict[str, TestClient], path: str
) -> None:
    client = signed_in["ci"]
    a, b = rack(services, "a"), rack(services, "b")
    _fill(services, a, "a", 3)
    client.get(path)
    with counting(services.db) as few:
        _, _, elevations = get(client, path)
    assert len(drawn(elevations["a"])) == 3 + 1 + 1
    _fill(services, b, "b", 30)
    with services.db.transaction() as session:  # and 27 more in rack a, 30 in all
        for i in range(27):
            session.add(Machine(name=f"a-more{i:02d}", rack_id=a))
    with counting(services.db) as many:
        _, _, elevations = get(client, path)
    assert len(elevations) == (2 if path == "/ui/racks" else 1)
    with services.db.read_session() as session:
        assert len(session.exec(select(Machine.id).where(Machine.rack_id == a)).all()) == 30
        assert len(session.exec(select(Allocation.id)).all()) == 17
    assert few == many
    assert few.count("SELECT") <= 9, few
