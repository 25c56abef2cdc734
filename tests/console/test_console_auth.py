"""Signing in and out of the console, the session cookie, CSRF, roles and the boot
listener: against the real app and database (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from provisiond.api import create_app
from provisiond.api.app import BootOnly
from provisiond.console.auth import COOKIE
from provisiond.container import Services
from provisiond.models import ApiToken, ConsoleSession, Event, utcnow
from tests.conftest import Api
from tests.support.allocations import add_machines
from tests.support.console import csrf_of, sign_in

pytestmark = pytest.mark.postgres


def client_for(services: Services) -> TestClient:
    return TestClient(create_app(services), raise_server_exceptions=False)


def test_sign_in_sets_a_strict_httponly_cookie_and_never_shows_the_token(
    services: Services, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    token = api.tokens["operator"]
    with caplog.at_level(logging.DEBUG), client_for(services) as client:
        r = sign_in(client, token, "/ui/machines")
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/machines"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        for flag in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
            assert flag.lower() in cookie.lower(), cookie
        assert token not in cookie
        page = client.get("/ui/")
        assert page.status_code == 200
        assert "test-operator (operator)" in page.text
        assert token not in page.text
        assert "Content-Security-Policy" in page.headers
        assert page.headers["cache-control"] == "no-store"
    assert token not in caplog.text
    with services.db.read_session() as session:
        rows = session.exec(select(ConsoleSession)).all()
        assert len(rows) == 1
        assert token not in rows[0].sid_hash
        audits = session.exec(select(Event).where(Event.event == "console_sign_in")).all()
        assert [a.actor for a in audits] == ["console:test-operator"]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("pvd_not-a-real-token", "the token is not known"),
        ("", "no token was entered"),
        ("  ", "no token was entered"),
        ("pvd_" + "x" * 5000, "the token is not known"),
    ],
)
def test_a_wrong_token_is_refused_with_a_message(
    services: Services, api: Api, token: str, message: str
) -> None:
    with client_for(services) as client:
        r = sign_in(client, token)
        assert r.status_code == 401
        assert message in r.text
        assert "set-cookie" not in r.headers
        assert 'id="signin-error"' in r.text
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_an_expired_token_cannot_sign_in(services: Services, api: Api) -> None:
    with services.db.transaction() as session:
        row = session.exec(select(ApiToken).where(ApiToken.name == "test-ci")).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
    with client_for(services) as client:
        r = sign_in(client, api.tokens["ci"])
        assert r.status_code == 401
        assert "expired" in r.text


def test_pages_without_a_session_redirect_to_sign_in_keeping_the_target(
    services: Services,
) -> None:
    with client_for(services) as client:
        for path in ("/ui/", "/ui/machines?state=active", "/ui/racks"):
            r = client.get(path, follow_redirects=False)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/ui/signin?next=/ui/")
        # a forged cookie fails its signature before any lookup
        client.cookies.set(COOKIE, "abc.def", path="/ui")
        assert client.get("/ui/", follow_redirects=False).status_code == 303
        # the live refresh gets a plain 401, so its script reloads into the sign-in page
        r = client.get("/ui/", headers={"X-Console-Fragment": "1"})
        assert r.status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/api/v1/tokens"])
def test_sign_in_never_redirects_off_the_console(services: Services, api: Api, target: str) -> None:
    with client_for(services) as client:
        r = sign_in(client, api.tokens["operator"], target)
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/"


def test_sign_out_ends_the_session_and_the_copied_cookie_stops_working(
    services: Services, api: Api
) -> None:
    with client_for(services) as client, client_for(services) as thief:
        sign_in(client, api.tokens["operator"])
        page = client.get("/ui/")
        copied = client.cookies.get(COOKIE)
        assert copied
        thief.cookies.set(COOKIE, copied, path="/ui")
        assert thief.get("/ui/").status_code == 200
        r = client.post("/ui/signout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/signin"
        assert thief.get("/ui/", follow_redirects=False).status_code == 303
    with services.db.read_session() as session:
        assert session.exec(select(ConsoleSession)).all() == []


def test_revoking_the_token_ends_its_sessions(services: Services, api: Api) -> None:
    with client_for(services) as client:
        sign_in(client, api.tokens["operator"])
        assert client.get("/ui/").status_code == 200
        r = api.admin.delete("/api/v1/tokens/test-operator")
        assert r.status_code == 204, r.text
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_an_expired_session_is_refused(services: Services, api: Api) -> None:
    with client_for(services) as client:
        sign_in(client, api.tokens["operator"])
        with services.db.transaction() as session:
            for row in session.exec(select(ConsoleSession)).all():
                row.expires_at = utcnow() - timedelta(seconds=1)
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def _forms(services: Services, api: Api, role: str = "operator") -> tuple[TestClient, str]:
    add_machines(services.db, [{"name": "m1"}])
    client = client_for(services)
    client.__enter__()
    sign_in(client, api.tokens[role])
    return client, csrf_of(client.get("/ui/").text)


def test_a_form_without_the_csrf_token_is_refused(services: Services, api: Api) -> None:
    client, csrf = _forms(services, api)
    with client:
        for data in ({}, {"csrf": "wrong"}, {"csrf": csrf + "x"}):
            r = client.post("/ui/machines/m1/actions/maintenance-on", data=data)
            assert r.status_code == 403, data
            assert "security token" in r.text
        r = client.post("/ui/signout", data={})
        assert r.status_code == 403
        assert client.get("/ui/").status_code == 200  # still signed in
        # the right token, but the browser says the form came from another site
        r = client.post(
            "/ui/machines/m1/actions/maintenance-on",
            data={"csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert r.status_code == 403
        assert "evil.example" in r.text
    with services.db.read_session() as session:
        from provisiond.models import Machine

        assert session.exec(select(Machine.state)).one() == "available"


def test_an_action_runs_through_the_service_and_shows_its_result_once(
    services: Services, api: Api
) -> None:
    client, csrf = _forms(services, api)
    with client:
        confirm = client.get("/ui/machines/m1/actions/maintenance-on")
        assert confirm.status_code == 200
        assert "Enter maintenance m1?" in confirm.text
        r = client.post(
            "/ui/machines/m1/actions/maintenance-on",
            data={"csrf": csrf, "reason": "fan <b>noise</b>"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/machines/m1"
        shown = client.get("/ui/")
        assert "Enter maintenance m1: the machine is now maintenance" in shown.text
        assert "fan <b>" not in shown.text
        assert "the machine is now maintenance" not in client.get("/ui/").text  # once
        # a refused action shows the service's message and hint, not a 500
        client.post(
            "/ui/machines/m1/actions/maintenance-on", data={"csrf": csrf}, follow_redirects=False
        )
        shown = client.get("/ui/").text
        assert 'class="flash flash-error"' in shown
        assert "hint:" in shown
    with services.db.read_session() as session:
        from provisiond.models import Machine

        machine = session.exec(select(Machine)).one()
        assert machine.state == "maintenance"
        assert machine.maintenance_reason == "fan <b>noise</b>"
        event = session.exec(select(Event).where(Event.to_state == "maintenance")).one()
        assert event.actor == "console:test-operator"


def test_a_ci_token_gets_no_actions(services: Services, api: Api) -> None:
    client, csrf = _forms(services, api, role="ci")
    with client:
        assert client.get("/ui/machines/m1/actions/power-cycle").status_code == 403
        r = client.post("/ui/machines/m1/actions/maintenance-on", data={"csrf": csrf})
        assert r.status_code == 403
        assert "operator" in r.text


def test_unknown_actions_machines_and_files_are_pages_not_json(
    services: Services, api: Api
) -> None:
    client, csrf = _forms(services, api)
    with client:
        cases: list[tuple[str, str, dict[str, Any], int]] = [
            ("GET", "/ui/machines/m1/actions/explode", {}, 404),
            ("POST", "/ui/machines/nope/actions/maintenance-on", {"data": {"csrf": csrf}}, 404),
            ("GET", "/ui/static/%2e%2e%2fconsole.py", {}, 404),
            ("GET", "/ui/static/routes.py", {}, 404),
            ("GET", "/ui/no-such-page", {}, 404),
            (
                "POST",
                "/ui/signin",
                {"content": b"{}", "headers": {"content-type": "application/json"}},
                400,
            ),
        ]
        for method, path, kw, status in cases:
            r = client.request(method, path, **kw)
            assert r.status_code == status, (path, r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("text/html"), path
            assert "Traceback" not in r.text
        assert client.get("/ui/static/console.js").status_code == 200
        # a client that sends the dots unnormalised reaches no file either
        r = client.get("/ui/static/..%2F..%2F..%2Fetc%2Fpasswd")
        assert r.status_code == 404 and "root:" not in r.text


def test_the_console_is_not_served_on_a_boot_listener(services: Services, api: Api) -> None:
    with TestClient(BootOnly(create_app(services)), raise_server_exceptions=False) as client:
        for path in ("/ui/", "/ui/signin", "/ui/static/console.js", "/ui/live"):
            r = client.get(path)
            assert r.status_code == 404, path
        r = sign_in(client, api.tokens["admin"])
        assert r.status_code == 404


def test_the_live_stream_sends_new_events_and_ends_after_sign_out(
    services: Services, api: Api
) -> None:
    from provisiond.console import live

    client, csrf = _forms(services, api)
    with services.db.read_session() as session:
        head = max(e.id or 0 for e in session.exec(select(Event)).all())
    client.post(
        "/ui/machines/m1/actions/maintenance-on", data={"csrf": csrf}, follow_redirects=False
    )
    old = live.STREAM_MAX_S
    live.STREAM_MAX_S = 3.0
    try:
        with client, client.stream("GET", f"/ui/live?since={head}") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            text = ""
            for chunk in r.iter_text():
                text += chunk
                if '"to_state":"maintenance"' in text:
                    break
        assert re.search(r'event: change\ndata: \{"id":\d+,"machine":"m1"', text), text
    finally:
        live.STREAM_MAX_S = old


def test_hostile_forms_get_error_pages_not_500s(services: Services, api: Api) -> None:
    client, csrf = _forms(services, api)
    with client:
        many = "&".join(f"f{i}=x" for i in range(40))
        for path, body in (
            ("/ui/signin", many),
            ("/ui/machines/m1/actions/maintenance-on", f"csrf={csrf}&reason=a%00b"),
        ):
            r = client.post(
                path, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert r.status_code == 400, (path, r.text[:300])
            assert r.headers["content-type"].startswith("text/html")
        r = client.get("/ui/machines/m%00x")
        assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    with services.db.read_session() as session:
        from provisiond.models import Machine

        assert session.exec(select(Machine.state)).one() == "available"


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"}, False),
        ({"Origin": "http://evil.example"}, False),
        # behind a proxy that rewrites Host, the browser still says same-origin
        ({"Sec-Fetch-Site": "same-origin", "Origin": "https://console.example"}, True),
        ({"Origin": "http://TESTSERVER"}, True),
        ({}, True),
    ],
)
def test_forms_from_other_sites_are_refused_even_sign_in(
    services: Services, api: Api, headers: dict[str, str], allowed: bool
) -> None:
    client, csrf = _forms(services, api)
    with client:
        r = client.post(
            "/ui/machines/m1/actions/maintenance-on",
            data={"csrf": csrf},
            headers=headers,
            follow_redirects=False,
        )
        assert r.status_code == (303 if allowed else 403), r.text[:300]
    with client_for(services) as fresh:
        r = fresh.post(
            "/ui/signin",
            data={"token": api.tokens["ci"], "next": "/ui/"},
            headers=headers,
            follow_redirects=False,
        )
        assert r.status_code == (303 if allowed else 403), r.text[:300]


def test_the_result_is_not_eaten_by_the_live_stream_or_a_refresh(
    services: Services, api: Api
) -> None:
    from provisiond.console import live

    client, csrf = _forms(services, api)
    old = live.STREAM_MAX_S
    live.STREAM_MAX_S = 0.5
    try:
        with client:
            client.post(
                "/ui/machines/m1/actions/maintenance-on",
                data={"csrf": csrf},
                follow_redirects=False,
            )
            odd: Any = {"Last-Event-ID": "\u00b2".encode("latin-1")}
            with client.stream("GET", "/ui/live", headers=odd) as r:
                assert r.status_code == 200
                assert "event: change" not in "".join(r.iter_text())  # starts from now
            fragment = client.get("/ui/machines/m1", headers={"X-Console-Fragment": "1"})
            assert 'id="flash"' not in fragment.text
            assert "the machine is now maintenance" in client.get("/ui/machines/m1").text
    finally:
        live.STREAM_MAX_S = old
