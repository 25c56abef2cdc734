"""GET /api/v1/machines in pages (Link rel="next" cursors) and streamed (NDJSON), and the
CLI and client that follow the cursors."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from provisiond import client as client_module
from provisiond.cli import app as cli_app
from provisiond.client import ApiError, Client, next_cursor
from provisiond.container import Services
from provisiond.errors import DatabaseNotReady
from provisiond.machines import listing
from tests.api.test_machines import live  # noqa: F401  (the live-server fixture)
from tests.conftest import Api
from tests.support.allocations import add_machines, add_rack
from tests.support.statements import counting

M = "/api/v1/machines"


def seed(services: Services, names: list[str], **spec: Any) -> None:
    add_machines(services.db, [{"name": n, **spec} for n in names])


def names(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [m["name"] for m in r.json()]


def walk(api: Api, params: dict[str, Any], between: Any = None) -> tuple[list[str], int]:
    """Every name over the pages (following the Link header as a plain HTTP client
    would), and how many pages it took; ``between(page_number)`` runs between pages."""
    seen: list[str] = []
    url: str | None = M
    pages = 0
    first = True
    while url is not None and pages < 200:
        r = api.ci.get(url, params=params if first else None)
        first = False
        seen += names(r)
        pages += 1
        url = r.links.get("next", {}).get("url")
        if url is not None and between is not None:
            between(pages)
    return seen, pages


def error(r: Any, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["message"] and err["hint"], err
    return err


def test_default_page_is_500_and_a_next_link_leads_on(api: Api, services: Services) -> None:
    seed(services, [f"m{i:04d}" for i in range(501)])
    r = api.ci.get(M)
    first = names(r)
    assert first == [f"m{i:04d}" for i in range(500)]
    link = r.headers["link"]
    assert link.startswith("<http") and link.endswith('>; rel="next"'), link
    r = api.ci.get(r.links["next"]["url"])
    assert names(r) == ["m0500"] and "link" not in r.headers  # the last page has no next


def test_every_machine_once_across_pages_with_changes_between(api: Api, services: Services) -> None:
    original = [f"n{i:03d}" for i in range(0, 60, 2)]  # n000, n002, ... n058
    seed(services, original)
    added: list[str] = []

    def change(page: int) -> None:
        # new machines both behind and ahead of the cursor, and one deleted ahead of it
        fresh = [f"n{page * 7 - 1:03d}", f"n{page * 7 + 20:03d}", f"a{page}", f"z{page}"]
        fresh = [n for n in fresh if n not in original and n not in added]
        seed(services, fresh)
        added.extend(fresh)

    seen, pages = walk(api, {"limit": 7}, between=change)
    assert pages >= 5
    assert len(seen) == len(set(seen)), "a machine was listed twice"
    assert set(original) <= set(seen), set(original) - set(seen)
    assert seen == sorted(seen)  # by name, across pages
    assert {f"z{p}" for p in range(1, pages)} <= set(seen)  # created ahead: listed
    assert not {f"a{p}" for p in range(1, pages)} & set(seen)  # behind the cursor: next walk


def test_filters_hold_across_pages(api: Api, services: Services) -> None:
    r1 = add_rack(services.db, "r1")
    add_rack(services.db, "r2")
    a = [f"a{i:02d}" for i in range(9)]
    b = [f"b{i:02d}" for i in range(9)]
    c = [f"c{i:02d}" for i in range(5)]
    seed(services, a, tags=["gpu", "x"], rack_id=r1)
    seed(services, b, tags=["cpu"], arch="aarch64")
    add_machines(
        services.db, [{"name": n, "tags": ["gpu"], "arch": "aarch64"} for n in c], "enrolled"
    )
    expect = {
        "tag": ("gpu", a + c),
        "arch": ("aarch64", b + c),
        "rack": ("r1", a),
        "state": ("enrolled", c),
    }
    for key, (value, wanted) in expect.items():
        for limit in (1, 4, 1000):
            seen, _ = walk(api, {key: value, "limit": limit})
            assert seen == wanted, (key, limit, seen)
            streamed = [json.loads(line)["name"] for line in _stream(api, {key: value})]
            assert streamed == wanted, (key, streamed)
    seen, _ = walk(api, {"tag": "gpu", "arch": "aarch64", "limit": 2})
    assert seen == [f"c{i:02d}" for i in range(5)]
    assert walk(api, {"rack": "r2", "limit": 3})[0] == []


@pytest.mark.parametrize(
    "limit", ["0", "1001", "-1", "abc", "1e3", "9999999999", " 5", "\u00b2", "\u0665"]
)
def test_limit_out_of_bounds_is_422_with_a_hint(api: Api, limit: str) -> None:
    err = error(api.ci.get(M, params={"limit": limit}))
    assert [p["path"] for p in err["problems"]] == ["limit"]
    assert "1000" in err["hint"]


def test_limit_bounds_are_inclusive(api: Api, services: Services) -> None:
    seed(services, ["a", "b"])
    r = api.ci.get(M, params={"limit": "1"})
    assert names(r) == ["a"] and "cursor=" in r.headers["link"]
    assert names(api.ci.get(M, params={"limit": "1000"})) == ["a", "b"]


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "bm90LWEtY3Vyc29y",  # base64 of "not-a-cursor"
        base64.urlsafe_b64encode(b"m1:" + b"a" * 65).decode(),  # longer than any name
        base64.urlsafe_b64encode(b"m1:a\x00b").decode(),
        base64.urlsafe_b64encode(b"m1:\xff\xfe").decode(),
        "=" * 10,
        "bTE6YQ\x00",  # a NUL inside
        "x" * 129,  # over the 128 characters a query value may have
    ],
)
def test_a_bad_cursor_is_422_with_a_hint_never_500(
    api: Api, services: Services, cursor: str
) -> None:
    seed(services, ["a"])
    err = error(api.ci.get(M, params={"cursor": cursor}))
    assert "cursor" in {p["path"] for p in err["problems"]}, err


def test_a_cursor_of_a_deleted_machine_still_continues(api: Api, services: Services) -> None:
    seed(services, ["a", "b", "c"])
    r = api.ci.get(M, params={"limit": 1})
    assert names(r) == ["a"]
    assert api.operator.delete(f"{M}/a").status_code == 204
    assert names(api.ci.get(r.links["next"]["url"])) == ["b"]


def test_every_problem_at_once(api: Api) -> None:
    err = error(api.ci.get(M, params={"state": "bogus", "limit": "0", "cursor": "??"}))
    assert {p["path"] for p in err["problems"]} == {"state", "limit", "cursor"}
    assert "available" in err["hint"] and "Link" in err["hint"]


def _stream(api: Api, params: dict[str, Any]) -> list[str]:
    r = api.ci.get(M, params={**params, "stream": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    text: str = r.text
    assert text == "" or text.endswith("\n")
    return text.splitlines()


def test_stream_sends_every_machine_as_ndjson_across_chunks(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "EXPORT_CHUNK", 4)
    assert _stream(api, {}) == []
    seed(services, [f"m{i:02d}" for i in range(13)])
    lines = _stream(api, {})
    rows = [json.loads(line) for line in lines]
    assert [m["name"] for m in rows] == [f"m{i:02d}" for i in range(13)]
    # the same views as the pages
    assert rows == api.ci.get(M).json()
    error(api.ci.get(M, params={"stream": "true", "limit": "5"}))
    error(api.ci.get(M, params={"stream": "true", "cursor": "abc"}))
    error(api.ci.get(M, params={"stream": "maybe"}))
    error(api.ci.get(M, params={"stream": "true", "state": "bogus"}))


def test_a_stream_that_breaks_ends_with_an_error_line(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(services, [f"m{i:02d}" for i in range(6)])
    monkeypatch.setattr(listing, "EXPORT_CHUNK", 4)
    real = listing.page
    calls = []

    def flaky(session: Any, query: listing.Query) -> Any:
        calls.append(query)
        if len(calls) > 1:
            raise DatabaseNotReady("the database went away", hint="start it again")
        return real(session, query)

    monkeypatch.setattr(listing, "page", flaky)
    lines = _stream(api, {})
    assert [json.loads(x)["name"] for x in lines[:4]] == ["m00", "m01", "m02", "m03"]
    assert json.loads(lines[-1])["error"]["hint"] == "start it again"


def _full_machine(api: Api, name: str, n: int) -> None:
    mac = f"aa:00:00:00:{n // 256:02x}:{n % 256:02x}"
    body = {
        "name": name,
        "rack": "r1",
        "tags": ["t"],
        "nics": [{"mac": mac, "name": "eth0", "pxe": True, "switch_port": f"sw1/p{n}"}],
        "bmc": {"address": f"127.0.1.{n}", "credential_set": "lab"},
    }
    r = api.operator.post(M, json=body)
    assert r.status_code == 201, r.text


def test_a_page_costs_the_same_statements_for_2_or_20_machines(
    api: Api, services: Services
) -> None:
    """No N+1: NICs, BMCs, racks, switch ports and credential sets come in one query each."""
    assert api.operator.post("/api/v1/racks", json={"name": "r1"}).status_code == 201
    ports = [{"name": f"p{i}"} for i in range(1, 21)]
    r = api.operator.post("/api/v1/switches", json={"name": "sw1", "ports": ports})
    assert r.status_code == 201, r.text
    body = {"name": "lab", "username": "admin", "password": "pw"}
    assert api.admin.post("/api/v1/credentials", json=body).status_code == 201
    for i in range(1, 3):
        _full_machine(api, f"m{i:02d}", i)
    api.ci.get(M)  # warm-up
    with counting(services.db) as two:
        assert len(api.ci.get(M).json()) == 2
    for i in range(3, 21):
        _full_machine(api, f"m{i:02d}", i)
    with counting(services.db) as twenty:
        page = api.ci.get(M).json()
    assert len(page) == 20 and len(twenty) == len(two), (two, twenty)
    # and the page shows what GET /machines/{name} shows, switch ports and all
    one = api.ci.get(f"{M}/m07").json()
    assert page[6] == one
    assert one["nics"][0]["switch_port"] == "sw1/p7"
    assert one["bmc"]["credential_set"] == "lab" and one["rack"] == "r1"


# --- the client and the CLI follow the cursors ---------------------------------------


def test_cli_list_follows_cursors_and_limit_stops_early(
    api: Api,
    services: Services,
    live: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 5)
    seed(services, [f"m{i:02d}" for i in range(12)])
    seed(services, ["x1", "x2"], arch="aarch64")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["machines", "list", "--json"], env=live)
    assert r.exit_code == 0, r.output
    assert [m["name"] for m in json.loads(r.stdout)] == [f"m{i:02d}" for i in range(12)] + [
        "x1",
        "x2",
    ]
    r = runner.invoke(cli_app, ["machines", "list", "--arch", "aarch64", "--json"], env=live)
    assert [m["name"] for m in json.loads(r.stdout)] == ["x1", "x2"]
    r = runner.invoke(cli_app, ["machines", "list", "--limit", "7", "--json"], env=live)
    assert [m["name"] for m in json.loads(r.stdout)] == [f"m{i:02d}" for i in range(7)]
    r = runner.invoke(cli_app, ["machines", "list", "--limit", "7"], env=live)
    assert r.exit_code == 0 and "7+ machine(s)" in r.stdout and "raise --limit" in r.stderr
    r = runner.invoke(cli_app, ["machines", "list", "--limit", "14"], env=live)
    assert "14 machine(s)" in r.stdout and "raise --limit" not in r.stderr
    r = runner.invoke(cli_app, ["machines", "list", "--limit", "0"], env=live)
    assert r.exit_code != 0


def test_client_pages_and_export(
    api: Api,
    services: Services,
    live: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "PAGE_SIZE", 3)
    seed(services, [f"m{i:02d}" for i in range(11)], tags=["ci"])
    seed(services, ["other"])
    with Client(live["PROVISIOND_URL"], api.tokens["ci"]) as c:
        every = [m["name"] for m in c.paginate("/machines")]
        assert every == [f"m{i:02d}" for i in range(11)] + ["other"]
        assert [m["name"] for m in c.machines(tag="ci")] == [f"m{i:02d}" for i in range(11)]
        assert len(c.machines(limit=4)) == 4
        exported = list(c.export_machines(tag="ci"))
        assert [m["name"] for m in exported] == [f"m{i:02d}" for i in range(11)]
        assert exported == c.machines(tag="ci")
        with pytest.raises(ApiError) as caught:
            list(c.paginate("/machines", cursor="nonsense"))
        assert caught.value.status == 422 and "Link" in caught.value.hint
    r = httpx.get(
        live["PROVISIOND_URL"] + M,
        params={"limit": 2},
        headers={"Authorization": f"Bearer {api.tokens['ci']}"},
    )
    assert next_cursor(r) is not None and listing.decode_cursor(next_cursor(r) or "") == "m01"
