"""Console fixtures: a TestClient signed in as each role (the ``api`` fixture's tokens)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from provisiond.api import create_app
from provisiond.container import Services
from tests.conftest import Api
from tests.support.console import sign_in


@pytest.fixture
def signed_in(services: Services, api: Api) -> Iterator[dict[str, TestClient]]:
    """``signed_in["operator"]`` etc.: one TestClient per role, each with its own cookie."""
    clients: dict[str, TestClient] = {}
    for role in ("admin", "operator", "ci"):
        client = TestClient(create_app(services), raise_server_exceptions=False)
        client.__enter__()
        r = sign_in(client, api.tokens[role])
        assert r.status_code == 303, r.text
        clients[role] = client
    try:
        yield clients
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
