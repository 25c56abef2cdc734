"""The console's overview page (/ui/): state counts, the allocation queue and leases
(ci sees only its own), failed machines with their reasons, racks over budget, failing
cabling and holds; every value read back from the page's HTML."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.auth import create_token
from provisiond.cabling.check import PlannedNic, SwitchInfo, check
from provisiond.container import Services
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, Deployment, Machine, Nic, Rack, utcnow
from tests.support.allocations import add_machines, add_rack, fire, fleet, token_id
from tests.support.statements import counting

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
HOSTILE = '<script>alert("x")</script>&\'<img src=x onerror=alert(1)>'


@dataclass
class Node:
    """An element of a parsed page: enough of a DOM for these tests."""

    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def words(self) -> str:
        return " ".join(self.text.split())

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Any:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.at = Node("#document", {})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.at)
        self.at.children.append(node)
        if tag not in VOID:
            self.at = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.at.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.at))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.at = node.parent

    def handle_data(self, data: str) -> None:
        self.at.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def page(client: TestClient, path: str = "/ui/") -> tuple[str, Node]:
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text, parse(r.text)


def section(doc: Node, name: str) -> Node:
    return doc.one(id=name)


# --- seeding -------------------------------------------------------------------------


def seed_states(services: Services) -> dict[str, str]:
    """Machines in several states; returns name -> the state it was left in."""
    db = services.db
    rack = add_rack(db, "r1")
    add_machines(db, fleet(4, "av", rack_id=rack))
    add_machines(db, fleet(2, "en", rack_id=rack), state="enrolled")
    add_machines(db, fleet(1, "old", rack_id=rack), state="retired")
    add_machines(db, [{"name": "df1"}, {"name": "rf1"}, {"name": "df2"}])
    add_machines(db, [{"name": "if1"}], state="enrolled")
    fire(db, "df1", Ev.DEPLOY, Ev.FAIL, reason="no DHCP request in 600s " + HOSTILE)
    fire(db, "if1", Ev.INSPECT, Ev.FAIL, reason="inspection ramdisk never called back")
    fire(db, "rf1", Ev.DEPLOY, Ev.BOOTED, Ev.READY, Ev.RELEASE, Ev.FAIL, reason="wipe of sda")
    fire(db, "df2", Ev.DEPLOY, Ev.FAIL)
    with db.transaction() as session:
        # a failure with no reason on the machine: the deploy's own reason stands in
        df2 = session.exec(select(Machine).where(Machine.name == "df2")).one()
        df2.last_error = None
        session.add(df2)
        assert df2.id is not None
        for reason in ("an older failure", "agent install: ssh refused"):
            session.add(Deployment(machine_id=df2.id, outcome="failed", failure_reason=reason))
            session.flush()
    with db.read_session() as session:
        return dict(session.exec(select(Machine.name, Machine.state)).all())


def add_allocation(
    services: Services,
    owner: str,
    state: str = "pending",
    *,
    age_s: int = 0,
    machine: str | None = None,
    expires_in_s: int | None = None,
    constraints: dict[str, Any] | None = None,
) -> str:
    owner_id = token_id(services.db, owner)
    now = utcnow()
    with services.db.transaction() as session:
        machine_id = None
        if machine is not None:
            machine_id = session.exec(select(Machine.id).where(Machine.name == machine)).one()
        row = Allocation(
            owner_token_id=owner_id,
            constraints=constraints or {},
            state=state,
            machine_id=machine_id,
            created_at=now - timedelta(seconds=age_s),
            expires_at=None if expires_in_s is None else now + timedelta(seconds=expires_in_s),
        )
        session.add(row)
        session.flush()
        return row.uuid


# --- tests ---------------------------------------------------------------------------


def test_counts_match_the_seeded_states(
    services: Services, signed_in: dict[str, TestClient]
) -> None:
    seeded = Counter(seed_states(services).values())
    _, doc = page(signed_in["operator"])
    states = section(doc, "states")
    shown = {
        a.attrs["data-state"]: int(a.one("b").text)
        for a in states.all("a", cls="count")
        if a.attrs["data-state"] != "total"
    }
    assert {s: n for s, n in shown.items() if n} == dict(seeded)
    assert all(
        int(a.attrs["data-count"]) == shown[a.attrs["data-state"]]
        for a in states.all("a", cls="state-count")
    )
    assert int(states.one("a", cls="total").one("b").text) == sum(seeded.values()) == 11
    # every count links to the machine list filtered by its state
    assert (
        states.one("a", data_state="deploy_failed").attrs["href"]
        == "/ui/machines?state=deploy_failed"
    )
    assert shown["active"] == 0  # shown, as a zero, so the strip keeps its layout


def test_failed_machines_show_their_reason(
    services: Services, signed_in: dict[str, TestClient]
) -> None:
    seed_states(services)
    html, doc = page(signed_in["ci"])
    failed = section(doc, "failed")
    rows = {tr.attrs["data-machine"]: tr for tr in failed.all("tr", cls="failed")}
    assert set(rows) == {"df1", "if1", "rf1", "df2"}
    assert rows["df1"].one("td", cls="reason").text == "no DHCP request in 600s " + HOSTILE
    assert rows["if1"].one("td", cls="reason").text == "inspection ramdisk never called back"
    assert rows["rf1"].one("td", cls="reason").text == "wipe of sda"
    assert rows["rf1"].one("span", cls="state").attrs["title"] == "failed in releasing"
    # no reason on the machine: the newest deploy failure's
    assert rows["df2"].one("td", cls="reason").text == "agent install: ssh refused"
    assert rows["df1"].one("a").attrs["href"] == "/ui/machines/df1"
    assert "<script>alert" not in html and "<img src=x" not in html
    assert html.count("<script") == 1  # the console's own script only
    assert "No failed deploys." not in failed.text


def test_a_failure_stays_on_the_overview_for_a_day_after_the_machine_moved_on(
    services: Services, signed_in: dict[str, TestClient]
) -> None:
    ids = add_machines(services.db, [{"name": "gone"}, {"name": "old"}], state="available")
    now = utcnow()
    with services.db.transaction() as session:
        for machine_id, ago, reason in (
            (ids[0], timedelta(hours=1), "deploying: no OS callback within 75s"),
            (ids[1], timedelta(hours=30), "an old failure"),
        ):
            session.add(Deployment(machine_id=machine_id, kind="deploy", outcome="failed",
                                   failure_reason=reason, started_at=now - ago,
                                   finished_at=now - ago))  # fmt: skip
    html, doc = page(signed_in["operator"])
    rows = {tr.attrs["data-machine"]: tr for tr in section(doc, "failed").all("tr", cls="failed")}
    assert set(rows) == {"gone"}, html
    assert rows["gone"].one("td", cls="reason").text == "deploying: no OS callback within 75s"
    assert rows["gone"].one("span", cls="state").text == "deploy_failed"
    assert "now available" in rows["gone"].text


def test_queue_positions_and_leases(services: Services, signed_in: dict[str, TestClient]) -> None:
    add_machines(services.db, fleet(2, "lease"))
    pending = [
        add_allocation(
            services, "test-operator", age_s=400, constraints={"min_cpus": 8, "tags": ["gpu"]}
        ),
        add_allocation(services, "test-ci", age_s=300),
        add_allocation(services, "test-operator", age_s=200, constraints={"arch": "aarch64"}),
        add_allocation(services, "test-ci", age_s=100, constraints={"rack": "r2"}),
    ]
    soon = add_allocation(
        services, "test-operator", "ready", machine="lease0000", expires_in_s=1800
    )
    later = add_allocation(services, "test-ci", "ready", machine="lease0001", expires_in_s=7200)
    deploying = add_allocation(services, "test-ci", "deploying", machine=None)
    add_allocation(services, "test-ci", "released")  # final: in neither list

    _, doc = page(signed_in["admin"])
    queue = section(doc, "queue")
    rows = queue.all("tr", cls="pending")
    assert [r.attrs["data-uuid"] for r in rows] == pending  # oldest first
    assert [r.one("td", cls="position").text for r in rows] == ["1", "2", "3", "4"]
    assert [r.one("td", cls="owner").text for r in rows] == ["test-operator", "test-ci"] * 2
    assert "≥8 CPUs" in rows[0].one("td", cls="wants").text
    assert "tags gpu" in rows[0].one("td", cls="wants").text
    assert rows[1].one("td", cls="wants").text == "any machine"
    leases = queue.all("tr", cls="lease")
    assert [r.attrs["data-uuid"] for r in leases] == [soon, later, deploying]
    assert leases[0].one("a").attrs["href"] == "/ui/machines/lease0000"
    assert leases[0].one("td", cls="left").text in ("in 29m", "in 30m")
    assert leases[1].one("td", cls="left").text in ("in 1h", "in 2h")
    assert leases[2].one("td", cls="left").text == "starts when ready"

    # ci: only its own, each at its place in the whole queue
    _, doc = page(signed_in["ci"])
    queue = section(doc, "queue")
    rows = queue.all("tr", cls="pending")
    assert [r.attrs["data-uuid"] for r in rows] == [pending[1], pending[3]]
    assert [r.one("td", cls="position").text for r in rows] == ["2", "4"]
    assert [r.attrs["data-uuid"] for r in queue.all("tr", cls="lease")] == [later, deploying]
    assert "test-operator" not in queue.text and "lease0000" not in queue.text


def test_owner_names_are_escaped(services: Services, signed_in: dict[str, TestClient]) -> None:
    with services.db.transaction() as session:
        create_token(session, name=HOSTILE[:64], role="ci")
    add_allocation(services, HOSTILE[:64], constraints={"site": HOSTILE})
    html, doc = page(signed_in["operator"])
    row = section(doc, "queue").one("tr", cls="pending")
    assert row.one("td", cls="owner").text == HOSTILE[:64]
    assert row.one("td", cls="wants").text == "site " + HOSTILE
    assert "<script>alert" not in html and html.count("<script") == 1


def test_racks_over_budget_and_cabling(
    services: Services, signed_in: dict[str, TestClient]
) -> None:
    db = services.db
    with db.transaction() as session:
        now = utcnow()
        for name, watts, status in (
            ("hot", 2100, "over_100"),
            ("warm", 1900, "over_90"),
            ("cool", 900, "ok"),
        ):
            session.add(
                Rack(
                    name=name,
                    power_budget_watts=2000,
                    measured_watts=watts,
                    budget_status=status,
                    measured_at=now,
                )
            )
    (mid,) = add_machines(db, [{"name": "wired"}])
    add_machines(db, [{"name": "held1", "hold_reason": "cabling: " + HOSTILE}])
    sw = SwitchInfo("sw1", ports={"swp1": "", "swp9": ""})
    nic = PlannedNic(
        "wired",
        "eth0",
        "52:54:00:aa:00:01",
        switch="sw1",
        port="swp1",
        seen={"system_name": "sw1", "port_id": "swp9"},
    )
    (result,) = check([nic], {"sw1": sw}).results
    assert result.result == "fail"
    with db.transaction() as session:
        session.add(
            Nic(
                machine_id=mid,
                mac=nic.mac,
                name="eth0",
                cabling="fail",
                cabling_detail=result.detail,
            )
        )
        session.add(Nic(machine_id=mid, mac="52:54:00:aa:00:02", name="eth1", cabling="pass"))

    html, doc = page(signed_in["operator"])
    power = section(doc, "power")
    rows = power.all("tr", cls="hot-rack")
    assert [r.attrs["data-rack"] for r in rows] == ["hot", "warm"]
    assert "105%" in rows[0].one("td", cls="share").text and "bad" in rows[0].classes
    assert "95%" in rows[1].one("td", cls="share").text and "warn" in rows[1].classes
    assert rows[0].one("a").attrs["href"] == "/ui/racks/hot"

    cabling = section(doc, "cabling")
    (bad,) = cabling.all("tr", cls="cabling-fail")
    assert (bad.attrs["data-machine"], bad.attrs["data-nic"]) == ("wired", "eth0")
    assert bad.one("td", cls="expected").text == "sw1/swp1"
    assert bad.one("td", cls="seen").words == "sw1/swp9"
    (held,) = cabling.all("tr", cls="held")
    assert held.one("td", cls="hold-reason").text == "cabling: " + HOSTILE
    assert "<script>alert" not in html


def test_empty_sections_say_so(services: Services, signed_in: dict[str, TestClient]) -> None:
    _, doc = page(signed_in["admin"])
    expected = {
        "states": "No machines yet.",
        "failed": "No failed deploys.",
        "power": "No rack over 90% of its power budget.",
    }
    for name, text in expected.items():
        assert section(doc, name).one("p", cls="empty").text == text
    assert [p.text for p in section(doc, "queue").all("p", cls="empty")] == [
        "No pending requests.",
        "No machines leased.",
    ]
    assert [p.text for p in section(doc, "cabling").all("p", cls="empty")] == [
        "No failing cabling checks.",
        "No machines on hold.",
    ]


def _more(services: Services, prefix: str, count: int) -> None:
    """``count`` more machines, half failed, each with an allocation and a bad NIC."""
    db = services.db
    ids = add_machines(db, fleet(count, prefix, hold_reason="held"))
    for i in range(0, count, 2):
        fire(db, f"{prefix}{i:04d}", Ev.DEPLOY, Ev.FAIL, reason="boom")
    with db.transaction() as session:
        for mid in ids:
            session.add(
                Nic(
                    machine_id=mid,
                    mac=f"52:54:01:00:{mid // 256:02x}:{mid % 256:02x}",
                    name="eth0",
                    cabling="fail",
                    cabling_detail={"reason": "x"},
                )
            )
            session.add(Deployment(machine_id=mid, outcome="failed", failure_reason="old"))
    for n in range(count):
        add_allocation(services, "test-ci", constraints={"min_cpus": n + 1})
        add_allocation(
            services, "test-operator", "ready", machine=f"{prefix}{n:04d}", expires_in_s=60
        )


@pytest.mark.parametrize("role", ["operator", "ci"])
def test_statements_do_not_grow_with_the_fleet(
    services: Services, signed_in: dict[str, TestClient], role: str
) -> None:
    client = signed_in[role]
    _more(services, "s", 3)
    page(client)  # warm: the flash, caches
    with counting(services.db) as small:
        _, doc = page(client)
    assert len(section(doc, "failed").all("tr", cls="failed")) == 2
    _more(services, "l", 30)
    with counting(services.db) as large:
        _, doc = page(client)
    assert len(section(doc, "failed").all("tr", cls="failed")) == 17
    # long sections stop at 25 rows and count the rest
    cabling = section(doc, "cabling")
    assert len(cabling.all("tr", cls="cabling-fail")) == 25
    assert cabling.all("span", cls="n")[0].text == "33"
    assert [p.words for p in cabling.all("p", cls="more")] == ["And 8 more."] * 2  # NICs, holds
    queue = section(doc, "queue")
    rows = queue.all("tr", cls="pending")
    assert [r.one("td", cls="position").text for r in rows] == [str(n) for n in range(1, 26)]
    assert queue.all("span", cls="n")[0].text == "33"
    assert queue.all("p", cls="more")[0].words.startswith("And 8 more")
    assert small == large
    assert small.count("SELECT") <= 12, small
