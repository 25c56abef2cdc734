"""Allocation API under load: 50 clients allocate and release against 1,000 machines.

Runs a real ``provisiond serve`` (uvicorn, scheduler, deploy engine) on SQLite and
on a throwaway PostgreSQL, and a bare FastAPI app (one POST returning JSON, same
uvicorn settings) in the same run. Each client is a thread with its own keep-alive
httpx connection and its own ci token, looping ``POST /allocations`` then
``DELETE /allocations/{id}`` for a fixed time. Prints requests/s, p50/p99 latency,
double allocations and the ratio to the bare endpoint.
Targets: >= 50% of the bare rate, p99 <= 50 ms, 0 double allocations.

**The deploy is stubbed out in this benchmark only**: in the daemon child,
``deploy.start_deploy`` is replaced by a function that moves the machine straight
to ``active`` (no power-cycle, no PXE, no SSH). Releases go through the real deploy
engine (no BMC and no OS key: the wipe is skipped, the machine becomes available).

A double allocation is counted two ways: two clients holding the same machine at
overlapping times (from the answers they got), and two allocations whose lifetimes
overlap on one machine in the database.

    .venv/bin/python tests/bench/bench_allocations.py [--clients 50] [--seconds 10]

Loopback only; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from provisiond.rack.scenario import free_port  # noqa: E402
from tests.support import pg  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.procs import stop as stop_proc  # noqa: E402

MACHINES = 1000
DEADLINE_S = 600.0
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench"

# The daemon child: provisiond serve with start_deploy stubbed (benchmark only).
STUBBED_SERVE = """
from sqlalchemy import update
from provisiond.models import Deployment, Event, Machine, utcnow
from provisiond.services import deploy

def instant_deploy(session, machine, *, allocation, image_id, actor, **_):
    now = utcnow()
    session.execute(update(Machine).where(Machine.id == machine.id, Machine.state == "allocated")
                    .values(state="active", state_changed_at=now, deadline=None, updated_at=now))
    session.expire(machine)
    record = Deployment(machine_id=machine.id, allocation_id=allocation.id, image_id=image_id,
                        address="127.0.0.1")
    session.add(record)
    session.add(Event(machine_id=machine.id, machine_name=machine.name, kind="transition",
                      event="deploy", from_state="allocated", to_state="active", actor=actor,
                      message="benchmark stub: deploy skipped"))
    return record

deploy.start_deploy = instant_deploy
from provisiond.cli import app
app(["serve"])
"""

BARE_SERVE = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()

@app.post("/api/v1/allocations")
def bare() -> dict:
    return {"id": "x", "state": "deploying", "machine": "m"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
            access_log=False, lifespan="off")
"""


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    holds: list[tuple[str, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def wait_up(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not up in {timeout}s")


def load(url: str, tokens: list[str], seconds: float, *, release: bool) -> Result:
    """Each thread: POST (and DELETE when ``release``) in a loop until time is up."""
    result, lock = Result(), threading.Lock()
    barrier = threading.Barrier(len(tokens), timeout=60)
    body = {"image": "bench", "ssh_keys": [KEY], "lease": "1h"}

    def client(token: str) -> None:
        mine = Result()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            barrier.wait()
            stop_at = time.monotonic() + seconds
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = http.post("/api/v1/allocations", json=body)
                t1 = time.perf_counter()
                mine.latencies.append(t1 - t0)
                if r.status_code >= 300:
                    mine.errors.append(f"POST {r.status_code} {r.text[:120]}")
                    continue
                if not release:
                    continue
                out = r.json()
                t2 = time.perf_counter()
                d = http.delete(f"/api/v1/allocations/{out['id']}")
                mine.latencies.append(time.perf_counter() - t2)
                if d.status_code != 200:
                    mine.errors.append(f"DELETE {d.status_code} {d.text[:120]}")
                if out.get("machine"):
                    mine.holds.append((out["machine"], t1, t2))
        with lock:
            result.latencies += mine.latencies
            result.holds += mine.holds
            result.errors += mine.errors

    threads = [threading.Thread(target=client, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    return result


def client_doubles(holds: list[tuple[str, float, float]]) -> int:
    by_machine: dict[str, list[tuple[float, float]]] = {}
    for machine, start, end in holds:
        by_machine.setdefault(machine, []).append((start, end))
    doubles = 0
    for spans in by_machine.values():
        spans.sort()
        doubles += sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    return doubles


def db_doubles(db_url: str) -> tuple[int, int]:
    """(overlapping allocation lifetimes on one machine, allocations made)."""
    from sqlmodel import col, select

    from provisiond.db import Database
    from provisiond.models import Allocation, Deployment

    db = Database(db_url)
    try:
        with db.read_session() as session:
            rows = session.exec(
                select(Deployment.machine_id, Deployment.started_at, Allocation.released_at)
                .join(Allocation, col(Allocation.id) == Deployment.allocation_id)
                .order_by(col(Deployment.machine_id), col(Deployment.started_at))
            ).all()
    finally:
        db.dispose()
    doubles = 0
    for prev, cur in itertools.pairwise(rows):
        if prev[0] == cur[0] and (prev[2] is None or cur[1] < prev[2]):
            doubles += 1
    return doubles, len(rows)


def seed(db_url: str, clients: int) -> list[str]:
    """1,000 available machines, an image and one ci token per client."""
    from provisiond.auth import create_token
    from provisiond.db import Database
    from tests.support.allocations import add_image, add_machines, fleet

    db = Database(db_url)
    try:
        add_image(db, "bench")
        add_machines(db, fleet(MACHINES, cpus=4))
        with db.transaction() as session:
            return [create_token(session, name=f"ci-{i}", role="ci")[1] for i in range(clients)]
    finally:
        db.dispose()


def summarize(name: str, result: Result, seconds: float) -> dict[str, float]:
    lat = sorted(result.latencies)
    rate = len(lat) / seconds
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else 0.0
    print(f"  {name:<24} {rate:8.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
          f"requests {len(lat)}   errors {len(result.errors)}")  # fmt: skip
    for err in result.errors[:3]:
        print(f"    error: {err}")
    return {"rate": rate, "p50": p50, "p99": p99}


def run_backend(label: str, db_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as tmp:
        extra = {"PROVISIOND_DATABASE_URL": db_url} if db_url else {}
        daemon = Daemon(Path(tmp) / "data", extra_env=extra)
        daemon.prepare()
        url = db_url or f"sqlite:///{Path(tmp) / 'data' / 'provisiond.db'}"
        tokens = seed(url, args.clients)
        log = (Path(tmp) / "serve.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-c", STUBBED_SERVE], env=daemon.env, stdout=log, stderr=log,
            cwd=ROOT,
        )  # fmt: skip
        try:
            wait_up(daemon.url + "/healthz", proc)
            load(daemon.url, tokens, 1.0, release=True)  # warm-up
            result = load(daemon.url, tokens, args.seconds, release=True)
            stats = summarize(f"allocations ({label})", result, args.seconds)
            time.sleep(1.5)  # the queue job marks the last ones ready; nothing more
        finally:
            stop_proc(proc, timeout=15)
            log.close()
        doubles, made = db_doubles(url)
        stats["client_doubles"] = client_doubles(result.holds)
        stats["db_doubles"] = doubles
        print(f"    allocations made {made}; double allocations: {stats['client_doubles']} "
              f"(client view), {doubles} (database)")  # fmt: skip
        return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    print(f"bench_allocations: {args.clients} clients, {MACHINES} machines, "
          f"{args.seconds:.0f}s per run, loopback only")  # fmt: skip
    print("  NOTE: deploy is STUBBED in this benchmark (start_deploy moves the machine "
          "straight to active); releases use the real engine.")  # fmt: skip

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVE, str(port)], cwd=ROOT)
    try:
        wait_up(f"http://127.0.0.1:{port}/docs", bare)
        tokens = ["bare"] * args.clients
        load(f"http://127.0.0.1:{port}", tokens, 1.0, release=False)
        bare_result = load(f"http://127.0.0.1:{port}", tokens, args.seconds, release=False)
        base = summarize("bare FastAPI POST", bare_result, args.seconds)
    finally:
        stop_proc(bare, timeout=10)

    runs = {"sqlite": run_backend("sqlite", None, args)}
    if not args.skip_postgres and pg.available():
        cluster = pg.start_cluster()
        try:
            runs["postgres"] = run_backend("postgres", cluster.url(), args)
        finally:
            cluster.stop()
    print("summary (targets: ratio >= 0.50, p99 <= 50 ms, 0 doubles)")
    for label, stats in runs.items():
        ratio = stats["rate"] / base["rate"] if base["rate"] else 0.0
        doubles = stats["client_doubles"] + stats["db_doubles"]
        ok = ratio >= 0.5 and stats["p99"] <= 50 and not doubles
        print(f"  {label:<9} {stats['rate']:6.0f} req/s = {ratio:.2f}x bare ({base['rate']:.0f}); "
              f"p50 {stats['p50']:.1f} ms; p99 {stats['p99']:.1f} ms; doubles {doubles}  "
              f"{'MET' if ok else 'MISSED'}")  # fmt: skip
    print(f"  took {time.monotonic() - started:.0f}s")
    if time.monotonic() - started > DEADLINE_S:
        print("  warning: the run took longer than its deadline")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
