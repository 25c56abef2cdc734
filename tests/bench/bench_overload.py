"""Overload: bursts of 1,000 concurrent requests against a real daemon, and recovery.

Runs ``provisiond serve`` on SQLite and on a throwaway PostgreSQL 15 with 200 machines,
then sends, for each heavy route, one burst of ``--burst`` concurrent requests (raw
sockets, one connection each, all released at once; the whole burst is capped at 30 s)
and reports per route:

- served/s: 2xx answers divided by the burst's wall time;
- refused: the share answered ``503 overloaded`` (with Retry-After);
- unanswered: requests without any answer by the cap (must be 0);
- slowest: the slowest answer of any kind;
- recover: from the end of the burst until ``/healthz`` and a normal
  ``GET /api/v1/machines`` both answer 200.

Baseline, same run, same machine: the same burst against a bare uvicorn + FastAPI app
with one GET route returning a fixed JSON list (no database, no auth, no admission):
what the framework alone does with 1,000 simultaneous connections.

    .venv/bin/python tests/bench/bench_overload.py [--burst 1000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from provisiond.db import Database
from provisiond.rack.scenario import free_port
from tests.support import pg
from tests.support.allocations import KEY, add_image, add_machines
from tests.support.daemon import Daemon
from tests.support.flood import Burst, burst
from tests.support.procs import stop as stop_proc

ROOT = Path(__file__).resolve().parents[2]
BARE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
ROWS = [{"name": f"m{i}", "state": "available", "arch": "x86_64"} for i in range(200)]

@app.get("/api/v1/machines")
def machines() -> list:
    return ROWS

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
            access_log=False, lifespan="off", backlog=2048)
"""


def line(label: str, b: Burst, recover: float | None) -> dict[str, float]:
    n = len(b.answers)
    ok = sum(v for k, v in b.statuses.items() if 200 <= k < 300)
    refused = b.statuses.get(503, 0)
    none = b.statuses.get(0, 0)
    other = n - ok - refused - none
    rec = f"{recover * 1000:6.0f} ms" if recover is not None else "     n/a"
    print(
        f"  {label:<34} served {ok / b.wall_s:6.0f}/s ({ok:4d})  refused {refused / n:5.1%}  "
        f"unanswered {none:3d}  other {other:3d}  slowest {b.slowest():5.2f} s  recover {rec}"
    )
    return {"served_per_s": ok / b.wall_s, "refused": refused / n, "unanswered": none}


def run_daemon(label: str, db_url: str, count: int) -> None:
    db = Database(db_url)
    db.upgrade()
    add_image(db)
    add_machines(db, [{"name": f"m{i}"} for i in range(200)])
    db.dispose()
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        d = Daemon(Path(tmp) / "data", extra_env={"PROVISIOND_DATABASE_URL": db_url})
        d.data_dir.mkdir()
        d.prepare()
        d.start()
        try:
            print(f"{label}:")
            alloc = json.dumps({"image": "debian-12", "ssh_keys": [KEY], "lease": 600}).encode()
            for name, path, method, body in (
                ("GET /api/v1/machines", "/api/v1/machines", "GET", None),
                ("GET /api/v1/events?limit=500", "/api/v1/events?limit=500", "GET", None),
                ("GET /api/v1/allocations", "/api/v1/allocations?limit=500", "GET", None),
                ("POST /api/v1/allocations", "/api/v1/allocations", "POST", alloc),
            ):
                b = burst(
                    d.port, path, count=count, token=d.admin_token, method=method, body=body,
                    deadline_s=30,
                )  # fmt: skip
                line(name, b, d.time_to_recover(60.0))
        finally:
            d.stop()
        failures = d.failures()
        print(f"  background job failures / stalls in the daemon's log: {len(failures)}"
              f"{' ' + str(failures[:5]) if failures else ''}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1/machines", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"baseline (bare FastAPI, no DB, no admission), burst of {args.burst}:")
        line("GET /api/v1/machines (bare)", burst(port, "/api/v1/machines", count=args.burst), None)
    finally:
        stop_proc(bare, timeout=10)

    with tempfile.TemporaryDirectory(prefix="bench-overload-db-") as tmp:
        run_daemon("provisiond on SQLite", f"sqlite:///{Path(tmp) / 'p.db'}", args.burst)
    if not args.skip_postgres and pg.available():
        cluster = pg.start_cluster()
        try:
            run_daemon("provisiond on PostgreSQL 15", cluster.url(), args.burst)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
