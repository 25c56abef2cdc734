"""The console's machine list: filters, search, sorting, pages, owners, errors, statements."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.container import Services
from provisiond.models import Allocation, Machine, Nic, Rack
from tests.support.allocations import token_id
from tests.support.statements import counting

Clients = dict[str, TestClient]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Rows(HTMLParser):
    """Each ``<tr data-machine>``: its name, cells' text, links and class names."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.row: dict[str, Any] | None = None
        self.cell: list[str] | None = None
        self.headers: dict[str, str] = {}
        self._th: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-machine") is not None:
            self.row = {"name": a["data-machine"], "cells": [], "links": [], "classes": []}
        elif tag == "td" and self.row is not None:
            self.cell = []
        elif tag == "a" and self.row is not None:
            self.row["links"].append(a.get("href"))
        elif tag == "span" and self.row is not None:
            self.row["classes"].append(a.get("class") or "")
        elif tag == "a" and a.get("data-sort"):
            self.headers[str(a["data-sort"])] = str(a.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.row is not None and self.cell is not None:
            self.row["cells"].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parse(html: str) -> Rows:
    parser = Rows()
    parser.feed(html)
    return parser


def names(client: TestClient, query: str = "") -> list[str]:
    r = client.get("/ui/machines" + query)
    assert r.status_code == 200, r.text
    return [row["name"] for row in parse(r.text).rows]


def seed(services: Services, specs: list[dict[str, Any]], racks: tuple[str, ...] = ()) -> None:
    """Machines from ``specs`` (Machine columns, plus ``rack`` by name and ``macs``)."""
    with services.db.transaction() as s:
        rack_ids = {}
        for name in racks:
            rack = Rack(name=name)
            s.add(rack)
            s.flush()
            rack_ids[name] = rack.id
        for spec in specs:
            spec = dict(spec)
            macs = spec.pop("macs", ())
            rack = spec.pop("rack", None)
            machine = Machine(rack_id=rack_ids[rack] if rack else None, **spec)
            s.add(machine)
            s.flush()
            assert machine.id is not None
            for mac in macs:
                s.add(Nic(machine_id=machine.id, mac=mac))


FLEET: list[dict[str, Any]] = [
    {"name": "alpha", "state": "available", "rack": "r2", "u_position": 3, "arch": "x86_64",
     "tags": ["gpu", "fast"], "serial": "SN-AAA-1", "macs": ["52:54:00:aa:00:01"],
     "updated_at": T0 + timedelta(minutes=5)},
    {"name": "bravo", "state": "active", "rack": "r1", "u_position": 10, "arch": "x86_64",
     "tags": ["gpu"], "serial": "SN-BBB-2", "macs": ["52:54:00:bb:00:02"],
     "updated_at": T0 + timedelta(minutes=1)},
    {"name": "charlie", "state": "available", "rack": "r1", "u_position": 2, "arch": "aarch64",
     "tags": [], "serial": "XYZ-777", "macs": ["52:54:00:cc:00:03", "52:54:00:cc:00:04"],
     "updated_at": T0 + timedelta(minutes=9)},
    {"name": "delta", "state": "maintenance", "arch": "x86_64", "tags": ["slow"],
     "serial": "", "updated_at": T0 + timedelta(minutes=3)},
    {"name": "echo-5", "state": "active", "rack": "r2", "u_position": 1, "arch": "aarch64",
     "tags": ["gpu"], "serial": "sn-eee-5", "macs": ["52:54:00:ee:00:05"],
     "updated_at": T0 + timedelta(minutes=7)},
]  # fmt: skip


@pytest.fixture
def fleet(services: Services) -> None:
    seed(services, FLEET, racks=("r1", "r2"))


def test_rows_show_each_machines_columns(signed_in: Clients, fleet: None) -> None:
    r = signed_in["operator"].get("/ui/machines")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    rows = {row["name"]: row for row in parse(r.text).rows}
    assert set(rows) == {m["name"] for m in FLEET}
    bravo = rows["bravo"]
    assert "/ui/machines/bravo" in bravo["links"]
    assert "state state-active" in bravo["classes"]
    assert bravo["cells"][1] == "active"
    assert bravo["cells"][2] == "unknown"  # power state
    assert bravo["cells"][3] == "r1 U10"
    assert bravo["cells"][4] == "x86_64"
    assert bravo["cells"][6] == "gpu"
    assert rows["delta"]["cells"][3] == "—"  # not placed
    assert rows["alpha"]["cells"][6] == "gpu fast"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?state=available", ["alpha", "charlie"]),
        ("?rack=r1", ["bravo", "charlie"]),
        ("?tag=gpu", ["echo-5", "alpha", "bravo"]),
        ("?arch=aarch64", ["echo-5", "charlie"]),
        ("?tag=gpu&state=active&rack=r2", ["echo-5"]),
        ("?tag=nothing", []),
        # search: name, serial, MAC; case-insensitive substrings
        ("?q=ECHO", ["echo-5"]),
        ("?q=Alp", ["alpha"]),
        ("?q=sn-", ["echo-5", "alpha", "bravo"]),
        ("?q=xyz", ["charlie"]),
        ("?q=CC:00:04", ["charlie"]),
        ("?q=52-54-00-bb", ["bravo"]),
        ("?q=a%25", []),  # a literal %, not a wildcard
        ("?q=%20ALPHA%20", ["alpha"]),
    ],
)
def test_filters_and_search(
    signed_in: Clients, fleet: None, query: str, expected: list[str]
) -> None:
    found = names(signed_in["ci"], query)
    assert sorted(found) == sorted(expected)
    assert found == sorted(found)  # by name


def test_sorting(signed_in: Clients, fleet: None) -> None:
    client = signed_in["operator"]
    by_name = sorted(m["name"] for m in FLEET)
    assert names(client) == by_name
    assert names(client, "?sort=name&order=desc") == by_name[::-1]
    # rack by name, then U, then name; machines without a rack last
    assert names(client, "?sort=rack") == ["charlie", "bravo", "echo-5", "alpha", "delta"]
    assert names(client, "?sort=rack&order=desc") == [
        "alpha",
        "echo-5",
        "bravo",
        "charlie",
        "delta",
    ]
    assert names(client, "?sort=state") == ["bravo", "echo-5", "alpha", "charlie", "delta"]
    assert names(client, "?sort=state&order=desc")[0] == "delta"
    assert names(client, "?sort=arch") == ["charlie", "echo-5", "alpha", "bravo", "delta"]
    newest_first = sorted(FLEET, key=lambda m: m["updated_at"], reverse=True)
    assert names(client, "?sort=updated&order=desc") == [m["name"] for m in newest_first]


def test_sort_links_keep_the_filters(signed_in: Clients, fleet: None) -> None:
    r = signed_in["operator"].get("/ui/machines?state=active&tag=gpu&sort=rack&order=asc&page=1")
    headers = parse(unescape(r.text)).headers
    assert set(headers) == {"name", "state", "rack", "arch", "updated"}
    rack = parse_qs(urlsplit(headers["rack"]).query)
    assert rack == {"state": ["active"], "tag": ["gpu"], "sort": ["rack"], "order": ["desc"]}
    updated = parse_qs(urlsplit(headers["updated"]).query)
    assert updated["sort"] == ["updated"] and updated["state"] == ["active"]
    # following a header link gives that order, still filtered
    assert names(signed_in["operator"], headers["rack"].removeprefix("/ui/machines")) == [
        "echo-5",
        "bravo",
    ]


def test_pages_of_fifty(signed_in: Clients, services: Services) -> None:
    seed(services, [{"name": f"n{i:03d}", "tags": ["t"] if i % 2 else []} for i in range(120)])
    client = signed_in["ci"]
    r = client.get("/ui/machines")
    page = parse(r.text)
    assert [row["name"] for row in page.rows] == [f"n{i:03d}" for i in range(50)]
    assert "Page 1 of 3" in r.text and "of 120" in r.text
    assert 'id="prev-page"' not in r.text
    nxt = re.search(r'href="([^"]+)" id="next-page"', r.text)
    assert nxt and nxt.group(1) == "/ui/machines?page=2"
    assert names(client, "?page=2") == [f"n{i:03d}" for i in range(50, 100)]
    r = client.get("/ui/machines?page=3")
    assert [row["name"] for row in parse(r.text).rows] == [f"n{i:03d}" for i in range(100, 120)]
    assert 'id="next-page"' not in r.text
    assert 'href="/ui/machines?page=2" id="prev-page"' in r.text
    r = client.get("/ui/machines?page=9")
    assert r.status_code == 200 and not parse(r.text).rows
    assert "past the last page" in r.text
    # filtered pages: the links keep the filter
    r = client.get("/ui/machines?tag=t&page=1")
    assert len(parse(r.text).rows) == 50 and "of 60" in r.text
    link = unescape(re.search(r'href="([^"]+)" id="next-page"', r.text).group(1))  # type: ignore[union-attr]
    assert parse_qs(urlsplit(link).query) == {"tag": ["t"], "page": ["2"]}
    assert names(client, "?tag=t&page=2") == [f"n{i:03d}" for i in range(101, 120, 2)]


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("?state=bogus", "states: enrolled"),
        ("?sort=serial", "sort by one of: name, state, rack, arch, updated"),
        ("?order=sideways", "asc or desc"),
        ("?page=0", "page is a whole number"),
        ("?page=abc", "page is a whole number"),
        ("?page=100001", "from 1 to 100000"),
        ("?page=-1", "page is a whole number"),
        ("?q=" + "x" * 65, "at most 64 characters"),
        ("?q=a%00b", "type q without control characters"),
        ("?rack=nowhere", "racks: r1, r2"),
    ],
)
def test_bad_parameters_are_a_422_page(
    signed_in: Clients, fleet: None, query: str, hint: str
) -> None:
    r = signed_in["operator"].get("/ui/machines" + query)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="error"' in r.text
    found = re.search(r'<p class="hint">Hint: (.*?)</p>', r.text, flags=re.S)
    assert found, r.text
    assert hint in unescape(found.group(1))


def test_lease_owner_is_shown_to_operators_and_to_its_own_ci(
    signed_in: Clients, services: Services, fleet: None
) -> None:
    ci, operator = token_id(services.db, "test-ci"), token_id(services.db, "test-operator")
    with services.db.transaction() as s:
        ids = {m.name: m.id for m in s.exec(select(Machine)).all()}
        s.add(Allocation(owner_token_id=ci, state="ready", machine_id=ids["bravo"],
                         expires_at=datetime.now(UTC) + timedelta(hours=2)))  # fmt: skip
        s.add(Allocation(owner_token_id=operator, state="deploying", machine_id=ids["echo-5"]))
        s.add(Allocation(owner_token_id=operator, state="released", machine_id=ids["alpha"]))

    def owners(role: str) -> dict[str, str]:
        r = signed_in[role].get("/ui/machines")
        return {row["name"]: row["cells"][7] for row in parse(r.text).rows}

    seen = owners("operator")
    assert seen["bravo"] == "test-ci (in 1h)"  # a lease of 2h, less the seconds since
    assert seen["echo-5"] == "test-operator"
    assert seen["alpha"] == ""  # a released allocation holds nothing
    seen = owners("ci")
    assert seen["bravo"].startswith("test-ci")
    assert seen["echo-5"] == "leased"
    assert "test-operator" not in signed_in["ci"].get("/ui/machines").text


def test_hostile_text_is_escaped(signed_in: Clients, services: Services) -> None:
    seed(services, [{"name": "evil", "tags": ["<script>alert(1)</script>"],
                     "serial": '"><img src=x onerror=alert(1)>'}])  # fmt: skip
    r = signed_in["operator"].get("/ui/machines?q=img")
    assert [row["name"] for row in parse(r.text).rows] == ["evil"]
    assert "<script>alert(1)</script>" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    r = signed_in["operator"].get("/ui/machines", params={"q": "<b>x</b>"})
    assert "<b>x</b>" not in r.text and "&lt;b&gt;x&lt;/b&gt;" in r.text


def _fleet_of(services: Services, count: int, prefix: str) -> None:
    ci = token_id(services.db, "test-ci")
    with services.db.transaction() as s:
        rack = Rack(name=f"rack-{prefix}")
        s.add(rack)
        s.flush()
        for i in range(count):
            m = Machine(name=f"{prefix}{i:03d}", rack_id=rack.id, u_position=i + 1,
                        tags=["gpu"], serial=f"S{i}", state="active")  # fmt: skip
            s.add(m)
            s.flush()
            assert m.id is not None
            s.add(
                Nic(machine_id=m.id, mac=f"52:54:01:{len(prefix):02x}:{i // 256:02x}:{i % 256:02x}")
            )
            s.add(Allocation(owner_token_id=ci, state="ready", machine_id=m.id))


@pytest.mark.parametrize("role", ["operator", "ci"])
def test_statements_do_not_grow_with_the_page(
    signed_in: Clients, services: Services, role: str
) -> None:
    client = signed_in[role]
    _fleet_of(services, 5, "a")
    _fleet_of(services, 50, "bb")
    counts = []
    for query in ("?rack=rack-a&q=a", "?rack=rack-bb&q=bb", "?sort=rack&tag=gpu", "?sort=updated"):
        client.get("/ui/machines" + query)  # warm-up
        with counting(services.db) as seen:
            r = client.get("/ui/machines" + query)
        assert r.status_code == 200
        counts.append((len(parse(r.text).rows), len(seen)))
    assert [rows for rows, _ in counts] == [5, 50, 50, 50]
    assert len({n for _, n in counts}) == 1, counts
