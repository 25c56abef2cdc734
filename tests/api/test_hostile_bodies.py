"""Hostile request bodies, on every route that takes one: the answer is a 4xx with the
usual error shape, never a 500, and no route reads more than its body limit.

The routes come from the app itself, so a route added later is covered without
editing this file. Placeholder path parameters make some routes answer 404 before the
body is read; the body checks still apply (a 404 is an honest answer), and the routes
where the body is parsed are asserted to give 400/413/422 specifically.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from provisiond.api.admission import DEFAULT_BODY_LIMIT, body_limit
from provisiond.api.routers import ROUTERS
from tests.conftest import Api
from tests.support.daemon import Daemon, cli

DEEP = b"[" * 100_000
#: Routes where the body is parsed with no lookup first (so the body's fault shows).
PARSED_FIRST = {
    "/api/v1/inventory/plan",
    "/api/v1/inventory/apply",
    "/api/v1/machines",
    "/api/v1/allocations",
    "/api/v1/racks",
    "/api/v1/images",
    "/api/v1/tokens",
}


def _body_routes() -> list[tuple[str, str]]:
    out = []
    for router in ROUTERS:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in sorted(route.methods & {"POST", "PUT", "PATCH"}):
                out.append((method, re.sub(r"\{[^}]+\}", "x1", route.path)))
    return out


ROUTES = _body_routes()


def test_the_route_table_has_the_body_routes_this_file_expects() -> None:
    paths = {p for _m, p in ROUTES}
    assert paths >= PARSED_FIRST, PARSED_FIRST - paths
    assert len(ROUTES) >= 20


def _shape(r: object) -> dict[str, str]:
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}, body
    assert {"code", "message", "hint"} <= set(body["error"]), body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/yaml", "text/plain", "application/x-www-form-urlencoded"],
)
def test_deeply_nested_body_is_a_4xx_with_the_error_shape(
    api: Api, method: str, path: str, content_type: str
) -> None:
    r = api.admin.request(method, path, content=DEEP, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    error = _shape(r)
    if path in PARSED_FIRST and content_type == "application/json":
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert error["code"] == "bad_request"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_declared_oversize_body_is_413_unread(api: Api, method: str, path: str) -> None:
    limit = body_limit(path)
    # a Content-Length over the limit with a small body: refused from the header alone
    r = api.admin.request(
        method,
        path,
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(limit + 1)},
    )
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert _shape(r)["code"] == "payload_too_large"


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[1] in PARSED_FIRST])
def test_a_chunked_oversize_body_is_413(api: Api, method: str, path: str) -> None:
    limit = body_limit(path)

    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent <= limit:
            yield b" " * 65536
            sent += 65536

    r = api.admin.request(
        method, path, content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert _shape(r)["code"] == "payload_too_large"


def test_inventory_limit_is_8_mib_and_others_1_mib() -> None:
    assert body_limit("/api/v1/inventory/apply") == 8 * 1024 * 1024
    assert body_limit("/api/v1/machines") == DEFAULT_BODY_LIMIT == 1024 * 1024
    assert body_limit("/boot/callback/x") == 16 * 1024


def test_unknown_route_and_unknown_object_share_one_code(api: Api) -> None:
    assert _shape(api.admin.get("/api/v1/no-such-route"))["code"] == "not_found"
    assert _shape(api.admin.get("/api/v1/machines/no-such-machine"))["code"] == "not_found"


def test_a_50_mb_inventory_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Against a real daemon: the 413 comes back while the client is still sending, and
    a client that disconnects mid-upload is an ordinary event in the log."""
    d = Daemon(tmp_path / "data")
    d.data_dir.mkdir()
    d.prepare()
    try:
        d.start()
        s = socket.create_connection(("127.0.0.1", d.port))
        try:
            s.sendall(
                (
                    "POST /api/v1/inventory/apply HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {d.admin_token}\r\n"
                    "Content-Type: application/yaml\r\n"
                    f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
                ).encode()
            )
            s.settimeout(5)
            t0 = time.monotonic()
            answer = b""
            while chunk := s.recv(65536):  # the daemon closes after its answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b"payload_too_large" in answer
            assert time.monotonic() - t0 < 1
        finally:
            s.close()
        # disconnect in the middle of a body under the limit
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(
            (
                "POST /api/v1/inventory/plan HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {d.admin_token}\r\n"
                "Content-Type: application/yaml\r\nContent-Length: 100000\r\n\r\nracks:\n"
            ).encode()
        )
        s.close()
        deadline = time.monotonic() + 10  # waits on the log line, not a fixed sleep
        while "client_disconnected" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = d.log_text()
        assert "client_disconnected" in log
        assert "unhandled_error" not in log and "Traceback" not in log, log[-2000:]
    finally:
        d.stop()


def test_a_control_character_in_yaml_is_reported_by_line_and_column(api: Api) -> None:
    text = "racks:\n  - name: r1\n  - name: r\x002\n"
    r = api.operator.post(
        "/api/v1/inventory/plan", content=text, headers={"content-type": "application/yaml"}
    )
    assert r.status_code == 422, r.text
    problem = r.json()["error"]["problems"][0]
    assert problem["line"] == 3
    assert "line 3, column 12" in problem["message"] and "#x0000" in problem["message"]
    assert "position" not in problem["message"]


def test_the_cli_refuses_an_oversize_inventory_before_parsing_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    line = "# " + "x" * 1000 + "\n"
    big.write_text("racks: []\n" + line * 9000)  # ~9 MB, over the 8 MiB limit
    env = {"PROVISIOND_URL": "http://127.0.0.1:9", "PROVISIOND_TOKEN": "pvd_x", "PATH": "/usr/bin"}
    t0 = time.monotonic()
    result = cli("inventory", "apply", str(big), env=env, timeout=60)
    elapsed = time.monotonic() - t0
    assert result.returncode != 0
    assert "the daemon takes inventories up to 8388608 bytes" in result.stderr, result.stderr
    assert "split it" in result.stderr
    assert elapsed < 5, elapsed
