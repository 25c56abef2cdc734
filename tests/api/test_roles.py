"""Who may call what: no token and a garbage token get 401, a lower role 403, the rest succeed."""

from __future__ import annotations

import re
from typing import Any

import pytest

from provisiond.api import create_app
from provisiond.container import Services
from tests.conftest import Api

ROLES = ("ci", "operator", "admin")
MACHINE: dict[str, Any] = {"name": "m-{role}", "nics": [{"mac": "aa:00:00:00:00:0{n}"}]}
IMAGE = {"name": "i-{role}", "kernel": "k", "initrd": "i"}
CREDENTIAL = {"name": "c-{role}", "username": "u", "password": "p"}

# (method, path, body, minimum role). "{role}" is replaced by the caller's role, so each
# caller acts on its own object; "{n}" by a digit unique to the role.
MATRIX: list[tuple[str, str, Any, str]] = [
    ("GET", "/api/v1/racks", None, "ci"),
    ("GET", "/api/v1/racks/seed-{role}", None, "ci"),
    ("POST", "/api/v1/racks", {"name": "r-{role}"}, "operator"),
    ("PATCH", "/api/v1/racks/seed-{role}", {"site": "dc2"}, "operator"),
    ("DELETE", "/api/v1/racks/seed-{role}", None, "operator"),
    ("GET", "/api/v1/machines", None, "ci"),
    ("GET", "/api/v1/machines/seed-{role}", None, "ci"),
    ("POST", "/api/v1/machines", MACHINE, "operator"),
    ("PATCH", "/api/v1/machines/seed-{role}", {"tags": ["x"]}, "operator"),
    ("POST", "/api/v1/machines/seed-{role}/events", {"event": "manage"}, "operator"),
    ("DELETE", "/api/v1/machines/seed-{role}", None, "operator"),
    ("GET", "/api/v1/switches", None, "ci"),
    ("POST", "/api/v1/switches", {"name": "s-{role}"}, "operator"),
    ("PATCH", "/api/v1/switches/seed-{role}", {"vendor": "x"}, "operator"),
    ("DELETE", "/api/v1/switches/seed-{role}", None, "operator"),
    ("GET", "/api/v1/pdus", None, "ci"),
    ("POST", "/api/v1/pdus", {"name": "p-{role}"}, "operator"),
    ("DELETE", "/api/v1/pdus/seed-{role}", None, "operator"),
    ("GET", "/api/v1/images", None, "ci"),
    ("GET", "/api/v1/images/seed-{role}", None, "ci"),
    ("POST", "/api/v1/images", IMAGE, "operator"),
    ("PATCH", "/api/v1/images/seed-{role}", {"kernel_args": "quiet"}, "operator"),
    ("DELETE", "/api/v1/images/seed-{role}", None, "operator"),
    ("GET", "/api/v1/events", None, "ci"),
    ("GET", "/api/v1/credentials", None, "operator"),
    ("GET", "/api/v1/credentials/seed-{role}", None, "operator"),
    ("POST", "/api/v1/credentials", CREDENTIAL, "operator"),
    ("PATCH", "/api/v1/credentials/seed-{role}", {"password": "q"}, "operator"),
    ("DELETE", "/api/v1/credentials/seed-{role}", None, "operator"),
    ("GET", "/api/v1/tokens", None, "admin"),
    ("GET", "/api/v1/tokens/seed-{role}", None, "admin"),
    ("POST", "/api/v1/tokens", {"name": "t-{role}", "role": "ci"}, "admin"),
    ("DELETE", "/api/v1/tokens/seed-{role}", None, "admin"),
]


def fill(value: Any, role: str) -> Any:
    if isinstance(value, str):
        return value.replace("{role}", role).replace("{n}", str(ROLES.index(role)))
    if isinstance(value, list):
        return [fill(v, role) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, role) for k, v in value.items()}
    return value


@pytest.fixture
def seeded(api: Api) -> Api:
    """One object of each kind per role, named seed-<role>."""
    for role in ROLES:
        name = f"seed-{role}"
        for path, body in (
            ("/api/v1/racks", {"name": name}),
            ("/api/v1/machines", {"name": name}),
            ("/api/v1/switches", {"name": name}),
            ("/api/v1/pdus", {"name": name}),
            ("/api/v1/images", {"name": name, "kernel": "k", "initrd": "i"}),
            ("/api/v1/credentials", {"name": name, "username": "u", "password": "p"}),
            ("/api/v1/tokens", {"name": name, "role": "ci"}),
        ):
            r = api.admin.post(path, json=body)
            assert r.status_code == 201, r.text
    return api


@pytest.mark.parametrize(
    "method,path,body,minimum", MATRIX, ids=[f"{m} {p} ({r})" for m, p, _, r in MATRIX]
)
def test_role_matrix(seeded: Api, method: str, path: str, body: Any, minimum: str) -> None:
    api = seeded
    for who, headers in (
        ("nobody", {}),
        ("garbage", {"Authorization": "Bearer pvd_not-a-real-token"}),
        ("malformed", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ):
        r = api.anonymous.request(method, fill(path, "ci"), json=fill(body, "ci"), headers=headers)
        assert r.status_code == 401, (who, r.text)
        assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["hint"]
    for role in ROLES:
        r = api.as_(role).request(method, fill(path, role), json=fill(body, role))
        if ROLES.index(role) < ROLES.index(minimum):
            assert r.status_code == 403, (role, r.text)
            assert minimum in r.json()["error"]["message"]
        else:
            assert r.status_code in (200, 201, 204), (role, r.text)


def test_ci_cannot_create_racks_or_machines_and_operator_cannot_create_tokens(api: Api) -> None:
    assert api.ci.post("/api/v1/racks", json={"name": "r"}).status_code == 403
    assert api.ci.post("/api/v1/machines", json={"name": "m"}).status_code == 403
    assert api.operator.post("/api/v1/tokens", json={"name": "t", "role": "ci"}).status_code == 403
    assert (
        api.operator.post("/api/v1/tokens", json={"name": "t", "role": "admin"}).status_code == 403
    )
    assert api.ci.get("/api/v1/racks").json() == [] and api.ci.get("/api/v1/machines").json() == []
    assert [t["name"] for t in api.admin.get("/api/v1/tokens").json()] == [
        "test-admin",
        "test-ci",
        "test-operator",
    ]


def test_every_api_route_needs_a_token(api: Api, services: Services) -> None:
    """A route added without a role dependency fails here, even if the matrix misses it."""
    checked = 0
    for route, operations in create_app(services).openapi()["paths"].items():
        if not route.startswith("/api/v1/"):
            continue
        path = re.sub(r"\{[^}]+\}", "x", route)
        for method in operations:
            r = api.anonymous.request(method.upper(), path)
            assert r.status_code == 401, (method, route, r.text)
            checked += 1
    assert checked >= len(MATRIX)
