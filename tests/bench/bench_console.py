"""Web console pages at 10,000 machines: server time against a static page of the same size.

Builds a migrated SQLite database of 10,000 machines (Core inserts): rack
``rack-full``, a 42U rack filled to the top (two 2U and 37 1U machines at U1-U41, a
switch at U42, a zero-U PDU whose outlets feed them), 248 racks of 40 machines with
their switch and PDU, rack ``rack-small`` with 5 machines, and 36 unracked machines
just enrolled. Every machine has a PXE NIC on its rack's switch (half have a second
NIC) and two transition events; three in ten are active with a ready allocation
owned by one of five ci tokens and a finished deployment with every boot phase, one
in ten is in maintenance, one in ten failed its deploy. Machine ``m00000`` (at U1
of the full rack) has 50 more events (boot phases, power).

The real app (``provisiond.api.create_app`` over real ``Services``) and a bare
FastAPI app are served by one uvicorn server set up as the daemon's (its listening
socket with TCP_NODELAY, its h11 protocol, no access log, lifespan off) in a thread
of this process, on 127.0.0.1. The bare app answers ``GET /bare/{page}`` from a
plain ``def`` route (as the console's reads are) with the very bytes the console
sent for that page, so the baseline is a static page of the same size through the
same server. An ASGI wrapper around both times each request on the server, from
its start to the last body message (**server time**, the target's figure); the
client's round trip (httpx, keep-alive, same process) is printed beside it.

For each page: 5 warm-up requests, then 50 timed ones, each followed by the static
request (interleaved, so both see the same conditions); at most ``PAGE_DEADLINE_S``
per page. Each page must answer 200 with what the database holds (the overview's
counts by state, every machine of the full rack, the machine's deploy phases, a
full page of the list). For context (no target), the real app's cheapest answers:
the sign-in page (a template, no database) and ``console.css`` (the app's
middleware, no template). After the timing: statements per request (SQLAlchemy
``before_cursor_execute`` on every lane's engine, :mod:`tests.support.statements`),
the time in the driver's execute and the slowest statement, and the statement
count of the same page showing fewer machines (rack ``rack-small``, the machine list
filtered to a rack, a 100-machine database for the overview and the list, a
machine with 2 events and 1 NIC) to show no N+1.

Targets (console issue): each page <= 50 ms median server time and <= 5x the
static page's median, with statement counts that do not grow with the machines on
the page.

    MYPYPATH=tests/bench .venv/bin/python tests/bench/bench_console.py [--requests 50]
        [--machines 10000]

Exits 1 when a page does not render (a missed target is printed, not an exit code).

Loopback only; the server thread is stopped and the temp directory removed on exit.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import HTMLResponse  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlmodel import Session  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from provisiond.api import create_app  # noqa: E402
from provisiond.auth import create_token  # noqa: E402
from provisiond.config import load_settings  # noqa: E402
from provisiond.container import Services  # noqa: E402
from provisiond.daemon import bind  # noqa: E402
from provisiond.db import Database  # noqa: E402
from provisiond.models import (  # noqa: E402
    Allocation,
    Deployment,
    Event,
    Image,
    Machine,
    Nic,
    Outlet,
    Pdu,
    Rack,
    Switch,
    SwitchPort,
    utcnow,
)
from provisiond.netboot.file_senders import FileSenders  # noqa: E402
from provisiond.netboot.zerocopy import zero_copy_protocol  # noqa: E402
from provisiond.secrets import SecretBox  # noqa: E402
from tests.support.console import sign_in  # noqa: E402
from tests.support.statements import counting  # noqa: E402

MACHINES = 10_000
SMALL_FLEET = 100  # the overview's and the list's "fewer machines" database
REQUESTS = 50
WARMUP = 5
SQL_SAMPLES = 10  # GETs per page with the statements timed (not in the timed figures)
PAGE_DEADLINE_S = 40.0  # timed requests of one page stop after this long
START_DEADLINE_S = 30.0
TARGET_MS = 50.0
TARGET_RATIO = 5.0
RACK_U = 42
FULL_RACK, SMALL_RACK = "rack-full", "rack-small"
MID_RACK_MACHINES, SMALL_RACK_MACHINES = 40, 5
HEAVY_EVENTS = 50
CI_TOKENS = 5
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench"
PHASES = (
    "deploy_requested", "power_cycle", "dhcp_discover", "dhcp_ack", "tftp", "ipxe_dhcp",
    "ipxe_script", "kernel", "initrd", "os_dhcp", "seed", "os_callback", "agent_install",
    "agent_installed", "agent_heartbeat",
)  # fmt: skip
NAME = re.compile(r"\bm\d{5}\b")
TAG = re.compile(r"<[^>]*>")


def machine_name(index: int) -> str:
    return f"m{index:05d}"


# --- the database ------------------------------------------------------------------


@dataclass
class Fleet:
    """What the seeded database holds that the checks and comparisons need."""

    count: int
    full_rack: list[str]
    small_rack: list[str]
    heavy: str  # 2 NICs, a deployment with every phase, 52 events
    light: str  # 1 NIC, a deployment with every phase, 2 events
    operator: str = ""  # the clear operator token the client signs in with
    states: Counter[str] = field(default_factory=Counter)  # machines by state


def _insert(session: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """Core executemany on the model's table (its Python-side defaults apply), one per
    set of keys (an executemany needs the same keys in every row)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for group in groups.values():
        session.connection().execute(model.__table__.insert(), group)


def _placements(count: int) -> list[tuple[str | None, int | None, int]]:
    """(rack, U position, U height) of each machine, in name order."""
    full: list[tuple[str | None, int | None, int]] = [(FULL_RACK, 1, 2), (FULL_RACK, 3, 2)]
    full += [(FULL_RACK, u, 1) for u in range(5, RACK_U)]  # U5-U41; the switch is at U42
    rest = count - len(full) - SMALL_RACK_MACHINES
    assert rest >= 0, f"at least {len(full) + SMALL_RACK_MACHINES} machines"
    mid: list[tuple[str | None, int | None, int]] = []
    for r in range(rest // MID_RACK_MACHINES):
        mid += [(f"r{r + 1:03d}", u, 1) for u in range(1, MID_RACK_MACHINES + 1)]
    small: list[tuple[str | None, int | None, int]] = [
        (SMALL_RACK, u, 1) for u in range(1, SMALL_RACK_MACHINES + 1)
    ]
    loose: list[tuple[str | None, int | None, int]] = [(None, None, 1)] * (rest - len(mid))
    return full + mid + small + loose


def _state(index: int, rack: str | None) -> str:
    if rack is None:
        return "enrolled"
    return {0: "active", 1: "active", 2: "active", 3: "maintenance", 4: "deploy_failed"}.get(
        index % 10, "available"
    )


def seed(db: Database, count: int) -> Fleet:
    """``count`` machines in racks with switches, PDUs, NICs, allocations and events."""
    now = utcnow()
    placements = _placements(count)
    rack_names = list(dict.fromkeys(r for r, _, _ in placements if r is not None))
    rack_id = {name: i + 1 for i, name in enumerate(rack_names)}
    heavy_index = 0
    light_index = next(i for i, (r, _, _) in enumerate(placements) if r == SMALL_RACK)
    fleet = Fleet(
        count=count,
        full_rack=[machine_name(i) for i, p in enumerate(placements) if p[0] == FULL_RACK],
        small_rack=[machine_name(i) for i, p in enumerate(placements) if p[0] == SMALL_RACK],
        heavy=machine_name(heavy_index),
        light=machine_name(light_index),
    )
    with db.transaction() as session:
        image = Image(name="debian-12", kernel="vmlinuz", initrd="initrd.img")
        session.add(image)
        _row, fleet.operator = create_token(session, name="bench-operator", role="operator")
        owners = [create_token(session, name=f"ci-{i}", role="ci")[0] for i in range(CI_TOKENS)]
        session.flush()
        owner_ids = [o.id for o in owners]

        racks: list[dict[str, Any]] = []
        switches: list[dict[str, Any]] = []
        pdus: list[dict[str, Any]] = []
        ports: list[dict[str, Any]] = []
        outlets: list[dict[str, Any]] = []
        for name, rid in rack_id.items():
            racks.append({"id": rid, "name": name, "site": "bench", "power_budget_watts": 8000})
            switches.append(
                {"id": rid, "name": f"sw-{name}", "rack_id": rid, "u_position": RACK_U,
                 "vendor": "Arista", "model": "7050", "mgmt_address": f"10.250.{rid // 250}."
                 f"{rid % 250}"}
            )  # fmt: skip
            pdus.append(
                {"id": rid, "name": f"pdu-{name}", "rack_id": rid, "u_position": None,
                 "u_height": 0, "capacity_watts": 11000, "driver": "apc_snmp",
                 "mgmt_address": f"10.251.{rid // 250}.{rid % 250}"}
            )  # fmt: skip
            for n in range(1, RACK_U + 1):
                ports.append({"id": (rid - 1) * RACK_U + n, "switch_id": rid,
                              "name": f"Ethernet{n}", "vlan": 100})  # fmt: skip
        machines: list[dict[str, Any]] = []
        nics: list[dict[str, Any]] = []
        allocations: list[dict[str, Any]] = []
        deployments: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        outlet_of: dict[tuple[int, int], int] = {}
        for i, (rack, u, height) in enumerate(placements):
            mid = i + 1
            state = "active" if i in (heavy_index, light_index) else _state(i, rack)
            fleet.states[state] += 1
            name = machine_name(i)
            machines.append(
                {"id": mid, "name": name, "rack_id": rack_id[rack] if rack else None,
                 "u_position": u, "u_height": height, "serial": f"SN{i:08d}",
                 "vendor": "Dell", "model": "R650" if height == 1 else "R750xa",
                 "cpus": 32 if height == 1 else 64, "ram_mib": 262144,
                 "tags": ["gpu", "nvme"] if height == 2 else ["nvme"] if i % 3 else [],
                 "power_watts": 350 if height == 1 else 900, "state": state,
                 "state_changed_at": now - timedelta(minutes=i % 997),
                 "created_at": now - timedelta(days=31),
                 "power_state": "on" if state == "active" else "off" if rack else "unknown",
                 "measured_watts": 180 + i % 150 if state == "active" else None,
                 "measured_source": "pdu" if state == "active" else "",
                 "maintenance_reason": f"RMA case {i}: replace DIMM B2"
                 if state == "maintenance" else "",
                 "last_error": {"phase": "deploying", "reason": "no OS callback within 900 s"}
                 if state == "deploy_failed" else None}
            )  # fmt: skip
            port = (rack_id[rack] - 1) * RACK_U + u if rack and u else None
            nics.append({"machine_id": mid, "mac": _mac(2 * i), "name": "eno1", "pxe": True,
                         "ip_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                         "switch_port_id": port, "cabling": "pass" if port else ""})  # fmt: skip
            if i % 2 == 0 and i != light_index:
                nics.append({"machine_id": mid, "mac": _mac(2 * i + 1), "name": "eno2"})
            if rack and u:
                outlet_of[(rack_id[rack], u)] = mid
            at = now - timedelta(days=30, seconds=-i)
            events.append(_event(at, mid, name, "transition", "enroll", "new", "enrolled"))
            if state != "enrolled":
                events.append(
                    _event(at + timedelta(days=1), mid, name, "transition", "done",
                           "inspecting", state)
                )  # fmt: skip
            if state == "active":
                aid = len(allocations) + 1
                allocations.append(
                    {"id": aid, "owner_token_id": owner_ids[i % CI_TOKENS], "state": "ready",
                     "machine_id": mid, "image_id": image.id, "ssh_keys": [KEY],
                     "created_at": now - timedelta(hours=2), "lease_s": 86400,
                     "expires_at": now + timedelta(hours=22)}
                )  # fmt: skip
                started = now - timedelta(hours=2)
                deployments.append(
                    {"machine_id": mid, "allocation_id": aid, "kind": "deploy",
                     "image_id": image.id, "outcome": "active", "started_at": started,
                     "finished_at": started + timedelta(seconds=len(PHASES) * 9),
                     "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                     "phases": {p: (started + timedelta(seconds=9 * n)).isoformat()
                                for n, p in enumerate(PHASES)}}
                )  # fmt: skip
        for n in range(HEAVY_EVENTS):
            kind, what = ("boot", PHASES[n % len(PHASES)]) if n % 3 else ("power", "power_on")
            events.append(
                _event(now - timedelta(hours=2, seconds=-9 * n), heavy_index + 1, fleet.heavy,
                       kind, what, None, None, message=heavy_message(n))
            )  # fmt: skip
        for (rid, u), mid in outlet_of.items():
            outlets.append({"pdu_id": rid, "number": u, "machine_id": mid, "state": "on",
                            "power_watts": 200})  # fmt: skip
        allocations += [
            {"owner_token_id": owner_ids[n % CI_TOKENS], "state": "pending", "image_id": image.id,
             "ssh_keys": [KEY], "constraints": {"tags": ["gpu"]}}
            for n in range(20)
        ]  # fmt: skip
        events.sort(key=lambda e: e["at"])
        for model, rows in (
            (Rack, racks), (Switch, switches), (SwitchPort, ports), (Pdu, pdus),
            (Machine, machines), (Nic, nics), (Outlet, outlets), (Allocation, allocations),
            (Deployment, deployments), (Event, events),
        ):  # fmt: skip
            _insert(session, model, rows)
    return fleet


def heavy_message(n: int) -> str:
    """The message of the heavy machine's ``n``-th extra event (the newest is the last)."""
    what = PHASES[n % len(PHASES)] if n % 3 else "power_on"
    return f"deploy phase {what} at +{9 * n}.0s"


def _mac(n: int) -> str:
    return "52:54:00:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (16, 8, 0))


def _event(
    at: Any, mid: int, name: str, kind: str, what: str, src: str | None, dst: str | None,
    message: str = "",
) -> dict[str, Any]:  # fmt: skip
    return {"at": at, "machine_id": mid, "machine_name": name, "kind": kind, "event": what,
            "from_state": src, "to_state": dst, "actor": "engine",
            "message": message or f"{src} -> {dst}"}  # fmt: skip


def build(tmp: Path, label: str, count: int) -> tuple[Services, Fleet]:
    data = tmp / label
    settings = load_settings(None, data_dir=data, database_url=f"sqlite:///{tmp / label}.db")
    db = Database(settings.db_url)
    db.upgrade()
    services = Services(
        settings=settings, db=db, secrets=SecretBox.from_key_file(settings.key_file),
        instance=f"bench-{label}",
    )  # fmt: skip
    try:
        return services, seed(db, count)
    except BaseException:
        services.close()
        raise


# --- the server ---------------------------------------------------------------------


class ServerTime:
    """ASGI wrapper: seconds from a request's start to its last body message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.samples: list[float] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.samples.append(time.perf_counter() - started)  # before the client has it
            await send(message)

        await self.app(scope, receive, timed)


class Split:
    """``/bare/...`` to the bare app, everything else to the console's app."""

    def __init__(self, real: ASGIApp, bare: ASGIApp) -> None:
        self.real, self.bare = real, bare

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.bare if str(scope.get("path", "")).startswith("/bare/") else self.real
        await target(scope, receive, send)


def bare_app(pages: dict[str, bytes]) -> FastAPI:
    app = FastAPI()

    @app.get("/bare/{key}")
    def bare(key: str) -> HTMLResponse:  # a plain def, as the console's reads are
        return HTMLResponse(pages[key])

    return app


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """uvicorn in a thread of this process on 127.0.0.1:<free port>, with the daemon's
    listening socket (:func:`provisiond.daemon.bind`: TCP_NODELAY) and HTTP protocol
    (h11 with zero-copy file bodies); stopped on exit."""
    sock = bind("127.0.0.1", 0)
    senders = FileSenders()
    config = uvicorn.Config(
        app, http=zero_copy_protocol(senders), log_config=None, access_log=False,
        lifespan="off", backlog=2048, timeout_keep_alive=30, timeout_graceful_shutdown=5,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="bench-uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the bench server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        senders.close()


def signed_in(url: str, token: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    r = sign_in(http, token)
    if r.status_code != 303 or not http.cookies:
        http.close()
        raise SystemExit(f"sign-in failed: {r.status_code} {r.text[:300]}")
    return http


# --- measuring ---------------------------------------------------------------------


@dataclass
class Page:
    label: str
    path: str
    expect: list[str]  # texts the page must contain (machine names, phases)
    body: bytes = b""
    server: list[float] = field(default_factory=list)
    client: list[float] = field(default_factory=list)
    bare_server: list[float] = field(default_factory=list)
    bare_client: list[float] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    sql: list[float] = field(default_factory=list)  # s in cursor execute, per GET
    slowest: tuple[float, str] = (0.0, "")  # the slowest statement seen (s, SQL)


def fetch(http: httpx.Client, path: str, expect: list[str]) -> bytes:
    """GET a console page; refuse anything but a 200 HTML page holding ``expect``."""
    r = http.get(path)
    kind = r.headers.get("content-type", "")
    if r.status_code != 200 or not kind.startswith("text/html"):
        raise PageFailed(f"GET {path}: {r.status_code} {kind} {r.text[:300]!r}")
    # the page's text: tags dropped, entities read, thousands separators gone
    plain = re.sub(r"(?<=\d)[,\u202f\xa0](?=\d{3})", "", html.unescape(TAG.sub(" ", r.text)))
    missing = [
        text for text in expect if not re.search(rf"(?<![\w-]){re.escape(text)}(?![\w-])", plain)
    ]
    if missing:
        raise PageFailed(f"GET {path}: 200 but without {missing[:5]} ({len(missing)} missing)")
    return r.content


class PageFailed(Exception):
    pass


def timed_get(http: httpx.Client, timing: ServerTime, path: str) -> tuple[float, float, int]:
    """(server s, client s, bytes) of one GET."""
    timing.samples.clear()
    started = time.perf_counter()
    r = http.get(path)
    took = time.perf_counter() - started
    if r.status_code != 200 or len(timing.samples) != 1:
        raise PageFailed(f"GET {path}: {r.status_code}, {len(timing.samples)} server samples")
    return timing.samples[0], took, len(r.content)


def measure(http: httpx.Client, timing: ServerTime, page: Page, requests: int) -> None:
    """Warm-up, then the page and its static twin in turn until ``requests`` or the deadline."""
    bare = f"/bare/{page.label}"
    for _ in range(WARMUP):
        timed_get(http, timing, page.path)
        timed_get(http, timing, bare)
    deadline = time.monotonic() + PAGE_DEADLINE_S
    while len(page.server) < requests and time.monotonic() < deadline:
        server, client, size = timed_get(http, timing, page.path)
        page.server.append(server)
        page.client.append(client)
        server, client, bare_size = timed_get(http, timing, bare)
        page.bare_server.append(server)
        page.bare_client.append(client)
        if abs(size - bare_size) > len(page.body) // 10 + 1024:
            raise PageFailed(f"{page.path} is now {size} bytes, the static one {bare_size}")


def statements(http: httpx.Client, db: Database, path: str) -> list[str]:
    """The statements of one GET of ``path`` (after one untimed GET, so nothing is cold)."""
    http.get(path)
    with counting(db) as seen:
        r = http.get(path)
    if r.status_code != 200:
        raise PageFailed(f"GET {path}: {r.status_code} {r.text[:300]!r}")
    return seen


def floors(
    http: httpx.Client, timing: ServerTime, requests: int
) -> dict[str, tuple[str, list[float]]]:
    """Server times of the real app's cheapest answers, for context: a console template
    without the database (the sign-in page) and a static file through the app's
    middleware (admission, request id), no template."""
    out: dict[str, tuple[str, list[float]]] = {}
    for label, path in (("sign-in page", "/ui/signin"), ("console.css", "/ui/static/console.css")):
        try:
            for _ in range(WARMUP):
                timed_get(http, timing, path)
            out[label] = (path, [timed_get(http, timing, path)[0] for _ in range(requests)])
        except (PageFailed, httpx.HTTPError) as exc:
            print(f"  (no context figure for {path}: {exc})")
    return out


def sql_time(http: httpx.Client, db: Database, page: Page) -> None:
    """Seconds in the database driver per GET (cursor execute), and the slowest statement,
    over ``SQL_SAMPLES`` GETs: where a page's server time goes."""
    took: list[tuple[float, str]] = []
    began: dict[int, float] = {}

    def before(_conn: Any, cursor: Any, *_args: Any) -> None:
        began[id(cursor)] = time.perf_counter()

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        took.append((time.perf_counter() - began.pop(id(cursor)), statement))

    with counting(db):  # makes every lane's engine first
        engines = db.engines()
        for engine in engines:
            event.listen(engine, "before_cursor_execute", before)
            event.listen(engine, "after_cursor_execute", after)
        try:
            for _ in range(SQL_SAMPLES):
                took.clear()
                if http.get(page.path).status_code != 200:
                    raise PageFailed(f"GET {page.path} failed while timing its SQL")
                page.sql.append(sum(t for t, _ in took))
                slowest = max(took, default=(0.0, ""))
                if slowest[0] > page.slowest[0]:
                    page.slowest = (slowest[0], " ".join(slowest[1].split()))
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", before)
                event.remove(engine, "after_cursor_execute", after)


def ms(seconds: list[float], q: float = 0.5) -> float:
    if not seconds:
        return float("nan")
    if q == 0.5:
        return statistics.median(seconds) * 1000
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def summary(kinds: list[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(kinds).most_common())


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# --- the run -----------------------------------------------------------------------


def pages_of(fleet: Fleet, list_page: int) -> list[Page]:
    counts = [str(n) for n in (*fleet.states.values(), fleet.count)]
    heavy = [fleet.heavy, "agent_heartbeat", _mac(0), _mac(1), heavy_message(HEAVY_EVENTS - 1)]
    return [
        Page("overview", "/ui/", counts),
        Page("rack", f"/ui/racks/{FULL_RACK}", [*fleet.full_rack, f"sw-{FULL_RACK}"]),
        Page("machine", f"/ui/machines/{fleet.heavy}", heavy),
        Page("machine list", f"/ui/machines?page={list_page}", []),
    ]


def list_page_of(http: httpx.Client, count: int) -> tuple[int, int]:
    """(a page in the middle of the list, machines per page), from page 1 by name."""
    first = fetch(http, "/ui/machines?page=1", [machine_name(0)]).decode()
    per_page = len(set(NAME.findall(first)))
    if per_page < 2:
        raise PageFailed(f"/ui/machines?page=1 names {per_page} machine(s)")
    return max(1, -(-count // per_page) // 2), per_page


def run(args: argparse.Namespace, tmp: Path) -> int:
    started = time.monotonic()
    services, fleet = build(tmp, "large", args.machines)
    small_services, small_fleet = build(tmp, "small", SMALL_FLEET)
    print(f"  seeded {args.machines} + {SMALL_FLEET} machines in "
          f"{time.monotonic() - started:.1f}s", flush=True)  # fmt: skip
    try:
        static: dict[str, bytes] = {}
        timing = ServerTime(Split(create_app(services), bare_app(static)))
        small_app = create_app(small_services)
        with serving(timing) as url, serving(small_app) as small_url:
            http = signed_in(url, fleet.operator)
            small_http = signed_in(small_url, small_fleet.operator)
            try:
                return measure_all(args, http, small_http, timing, static, services, fleet,
                                   small_services, small_fleet)  # fmt: skip
            finally:
                http.close()
                small_http.close()
    finally:
        services.close()
        small_services.close()


def measure_all(
    args: argparse.Namespace, http: httpx.Client, small_http: httpx.Client, timing: ServerTime,
    static: dict[str, bytes], services: Services, fleet: Fleet, small_services: Services,
    small_fleet: Fleet,
) -> int:  # fmt: skip
    failed: list[str] = []
    pages: list[Page] = []
    per_page = 0
    try:
        list_page, per_page = list_page_of(http, fleet.count)
    except PageFailed as exc:
        failed.append(str(exc))
        list_page = 2
    for page in pages_of(fleet, list_page):
        try:
            page.body = fetch(http, page.path, page.expect)
            if page.label == "machine list":
                on_page = set(NAME.findall(page.body.decode()))
                if len(on_page) != per_page:
                    raise PageFailed(f"{page.path} names {len(on_page)} machines, not {per_page}")
            static[page.label] = page.body
            measure(http, timing, page, args.requests)
            page.statements = statements(http, services.db, page.path)
            sql_time(http, services.db, page)
            pages.append(page)
        except (PageFailed, httpx.HTTPError) as exc:
            failed.append(f"{page.label}: {exc}")
        print(f"  measured {page.label:<13} {page.path}", flush=True)
    floor = floors(http, timing, args.requests)

    print(f"\nserver time, {args.requests} requests per page after {WARMUP} warm-up, "
          f"{fleet.count} machines, SQLite (targets: median <= {TARGET_MS:.0f} ms and "
          f"<= {TARGET_RATIO:.0f}x the static page of the same size)")  # fmt: skip
    header = (f"  {'page':<13} {'path':<24} {'KB':>6} {'median':>7} {'p95':>7} "
              f"{'static':>7} {'ratio':>6} {'stmts':>5}  {'<=50ms':<7}{'<=5x':<7}")  # fmt: skip
    print(header)
    met = True
    for p in pages:
        med, base = ms(p.server), ms(p.bare_server)
        ratio = med / base if base else float("inf")
        ok_ms, ok_ratio = med <= TARGET_MS, ratio <= TARGET_RATIO
        met = met and ok_ms and ok_ratio
        print(f"  {p.label:<13} {p.path:<24} {len(p.body) / 1024:6.1f} {med:7.2f} "
              f"{ms(p.server, 0.95):7.2f} {base:7.2f} {ratio:5.1f}x {len(p.statements):5d}  "
              f"{verdict(ok_ms):<7}{verdict(ok_ratio):<7}")  # fmt: skip
    for label, (path, took) in floor.items():
        print(f"  {label:<13} {path:<24} {'':>6} {ms(took):7.2f} {ms(took, 0.95):7.2f}"
              "   (context, no target)")  # fmt: skip
    print("client round trip (httpx on loopback, same process), ms:")
    for p in pages:
        print(f"  {p.label:<13} median {ms(p.client):6.2f}  p95 {ms(p.client, 0.95):6.2f}   "
              f"static median {ms(p.bare_client):6.2f}  p95 {ms(p.bare_client, 0.95):6.2f}   "
              f"({len(p.server)} requests)")  # fmt: skip
    print("statements per request (first word), for the timed pages:")
    for p in pages:
        print(f"  {p.label:<13} {len(p.statements):3d}: {summary(p.statements)}")
    print(f"where the server time goes (median of {SQL_SAMPLES} GETs): SQL is the time in the "
          "driver's execute (SQLite steps to the first row there; the rest is fetched after, "
          "so a lower bound); the rest is Python: rows, template, framework")  # fmt: skip
    for p in pages:
        sql, total = ms(p.sql), ms(p.server)
        print(f"  {p.label:<13} SQL {sql:6.2f} ms of {total:6.2f}; rest {total - sql:6.2f} ms; "
              f"slowest statement {p.slowest[0] * 1000:.2f} ms: {p.slowest[1][:150]}")  # fmt: skip

    growth = compare(http, small_http, services, small_services, fleet, small_fleet, failed)
    grows = False
    print("statements against the same page with fewer machines (target: equal, no N+1):")
    for label, many, few in growth:
        same = many[1] == few[1]
        grows = grows or many[1] > few[1]
        print(f"  {label:<13} {many[1]:3d} for {many[0]:<44} {few[1]:3d} for {few[0]:<40} "
              f"{'equal' if same else 'GROWS' if many[1] > few[1] else 'fewer'}")  # fmt: skip
    for message in failed:
        print(f"  FAILED {message}")
    ok = met and not grows and not failed and len(pages) == 4
    print(f"  all targets: {verdict(ok)}")
    return 0 if not failed else 1


def compare(
    http: httpx.Client, small_http: httpx.Client, services: Services, small_services: Services,
    fleet: Fleet, small_fleet: Fleet, failed: list[str],
) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:  # fmt: skip
    """(page, (many: what, statements), (few: what, statements)) for each page."""
    out = []
    pairs: list[tuple[str, tuple[str, httpx.Client, Database, str], tuple[str, httpx.Client,
                                                                          Database, str]]] = [
        ("overview",
         (f"/ui/ at {fleet.count} machines", http, services.db, "/ui/"),
         (f"/ui/ at {small_fleet.count}", small_http, small_services.db, "/ui/")),
        ("rack",
         (f"{FULL_RACK} ({len(fleet.full_rack)} machines)", http, services.db,
          f"/ui/racks/{FULL_RACK}"),
         (f"{SMALL_RACK} ({len(fleet.small_rack)})", http, services.db,
          f"/ui/racks/{SMALL_RACK}")),
        ("machine",
         (f"{fleet.heavy} ({HEAVY_EVENTS + 2} events, 2 NICs)", http, services.db,
          f"/ui/machines/{fleet.heavy}"),
         (f"{fleet.light} (2 events, 1 NIC)", http, services.db,
          f"/ui/machines/{fleet.light}")),
        ("machine list",
         (f"?rack={FULL_RACK} ({len(fleet.full_rack)} machines)", http, services.db,
          f"/ui/machines?rack={FULL_RACK}"),
         (f"?rack={SMALL_RACK} ({len(fleet.small_rack)})", http, services.db,
          f"/ui/machines?rack={SMALL_RACK}")),
        ("machine list",
         (f"page 1 at {fleet.count} machines", http, services.db, "/ui/machines?page=1"),
         (f"page 1 at {small_fleet.count}", small_http, small_services.db,
          "/ui/machines?page=1")),
    ]  # fmt: skip
    for label, (many, h1, db1, p1), (few, h2, db2, p2) in pairs:
        try:
            out.append((label, (many, len(statements(h1, db1, p1))),
                        (few, len(statements(h2, db2, p2)))))  # fmt: skip
        except (PageFailed, httpx.HTTPError) as exc:
            failed.append(f"comparing {label}: {exc}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=MACHINES)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args()
    if args.machines < 100 or not 1 <= args.requests <= 1000:
        parser.error("--machines >= 100 and --requests 1-1000 (hint: the defaults)")
    started = time.monotonic()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_console: {args.machines} machines, {args.requests} requests per page, "
          f"loopback only; load average {load} on {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        code = run(args, Path(tmp))
    print(f"  took {time.monotonic() - started:.0f}s")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
