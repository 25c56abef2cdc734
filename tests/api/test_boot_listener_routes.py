"""Which routes a provisioning network's boot listener serves (issue 11, defect 5).

Through :class:`provisiond.api.app.BootOnly` in front of the real app: every route of
the app is tried, and exactly the boot, agent and /healthz routes reach it; the rest
get the listener's 404. (tests/integration/test_boot_listener.py runs the daemon.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from provisiond.api import create_app
from provisiond.api.app import BootOnly
from provisiond.api.routers import ROUTERS
from provisiond.container import Services

BOOT_PREFIXES = ("/boot/", "/meta/", "/images/", "/api/v1/agent/")
REFUSED = "is not served on a provisioning network"


@pytest.fixture
def routes() -> list[tuple[str, str]]:
    """(method, concrete path) for every route of every router the app includes."""
    out: list[tuple[str, str]] = []
    for route in (r for router in ROUTERS for r in router.routes):
        if isinstance(route, APIRoute):
            path = re.sub(r"\{[^}]+\}", "x1", route.path)
            out.extend((method, path) for method in sorted(route.methods or ()))
    return out


@pytest.fixture
def listener(services: Services) -> Iterator[TestClient]:
    with TestClient(BootOnly(create_app(services)), raise_server_exceptions=False) as client:
        yield client


def test_only_the_boot_routes_pass(listener: TestClient, routes: list[tuple[str, str]]) -> None:
    assert len(routes) > 40
    passed, refused = [], []
    for method, path in routes:
        r = listener.request(method, path)
        if r.status_code == 404 and REFUSED in r.text:
            assert r.json()["error"]["code"] == "not_found"
            refused.append(path)
        else:
            passed.append(path)
    wanted = sorted({p for _, p in routes if p.startswith(BOOT_PREFIXES) or p == "/healthz"})
    assert sorted(set(passed)) == wanted
    assert "/metrics" in refused and "/api/v1/machines" in refused
    for path in ("/docs", "/openapi.json", "/", "/boot", "/api/v1/agent"):
        r = listener.get(path)
        assert r.status_code == 404 and REFUSED in r.text, path


def test_a_boot_route_keeps_its_own_answers(listener: TestClient) -> None:
    assert listener.get("/boot/ipxe").text.startswith("#!ipxe\n")
    assert listener.get("/healthz").json()["status"] == "ok"
    r = listener.delete("/boot/ipxe")  # the route's own 405, not the listener's 404
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = listener.get("/images/nothing/vmlinuz")  # the route's own 404
    assert r.status_code == 404 and "image store" in r.json()["error"]["message"]
