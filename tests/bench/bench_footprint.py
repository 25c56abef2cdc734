"""Daemon footprint at 10,000 machines: RSS, idle CPU, and GET /api/v1/machines.

Runs a real ``provisiond serve`` on SQLite, through the API as a user would:

1. RSS of the empty daemon;
2. ``POST /api/v1/inventory/apply`` of a generated inventory (``--machines`` machines,
   40 per rack, one PXE NIC and a loopback IPMI BMC each, no BMC password so power
   sync never sends a packet), then its RSS;
3. ``--lists`` full lists, each one a walk over every page of 500 by the
   ``Link: rel="next"`` cursors and one streamed export (``?stream=true``, NDJSON),
   with the RSS after each; the growth is measured from the first list to the last,
   so what the first list warms (statement caches, pools) is not counted as growth;
4. idle CPU over ``--idle`` seconds (scheduler, deploy engine, power sync running);
5. ``provisiond machines list --json`` once (the CLI follows the cursors);
6. the daemon restarted on the same database and ``--lists`` full lists again: the
   RSS the machines cost without what the apply's peak left in the allocator (a
   restart, an upgrade, or a daemon that did not run the apply itself).

Baselines in the same run: the RSS of a bare ``python -c 'import fastapi, sqlalchemy,
uvicorn'``, and a bare FastAPI app (same uvicorn) answering one precomputed page of 500
machines (a page the daemon returned), timed with the same client loop as the daemon's
pages. Latencies are wall times on a shared machine; the daemon's CPU per page
(``/proc/PID/stat``) is printed beside them as the figure that noise does not inflate.

    .venv/bin/python tests/bench/bench_footprint.py [--machines 10000] [--lists 20]
        [--idle 30]

Loopback only; every process is stopped by its PID; every loop is bounded in count and
time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from provisiond.rack.scenario import free_port  # noqa: E402
from tests.bench.benchlib import process_cpu, rss_mb  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.procs import stop as stop_proc  # noqa: E402

TARGET_RSS_MB = 150.0
TARGET_GROWTH_MB = 5.0
TARGET_PAGE_MS = 100.0
#: The unpaged GET /api/v1/machines at 10,000 machines before (issue #13): the
#: streamed export must not be slower than the list it replaces.
TARGET_EXPORT_S = 1.34
TARGET_IDLE_CPU = 0.01  # of one core
PAGE = 500
APPLY_TIMEOUT_S = 900.0
PHASE_DEADLINE_S = 900.0

BARE_SERVE = """
import json, sys, uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
page = json.load(open(sys.argv[2]))
app = FastAPI()

@app.get("/api/v1/machines")
def bare() -> JSONResponse:
    return JSONResponse(page)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
            access_log=False, lifespan="off")
"""

BARE_IMPORT = (
    "import fastapi, sqlalchemy, uvicorn\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def inventory(count: int) -> str:
    lines = ["version: 1", "racks:"]
    racks = (count + 39) // 40
    lines += [f"  - {{name: r{r:04d}, u_height: 42}}" for r in range(racks)]
    lines.append("machines:")
    for i in range(count):
        mac = ":".join(f"{b:02x}" for b in (0x52, 0x54, 0, i >> 16 & 255, i >> 8 & 255, i & 255))
        lines += [
            f"  - name: m{i:05d}",
            f"    rack: r{i // 40:04d}",
            f"    u_position: {i % 40 + 1}",
            f"    tags: [t{i % 7}, bench]",
            f'    nics: [{{mac: "{mac}", name: eth0, pxe: true}}]',
            # loopback and no password: power sync has nothing it may send to
            f"    bmc: {{driver: ipmi, address: 127.1.{i >> 8 & 255}.{i & 255}, username: admin}}",
        ]
    return "\n".join(lines) + "\n"


def walk(http: httpx.Client, url: str, limit: int) -> tuple[int, list[float]]:
    """Every page by its Link rel="next", at most ``limit`` pages: (machines, seconds each)."""
    seen, times = 0, list[float]()
    next_url: str | None = url
    deadline = time.monotonic() + PHASE_DEADLINE_S
    while next_url is not None and len(times) < limit and time.monotonic() < deadline:
        t0 = time.perf_counter()
        r = http.get(next_url)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        seen += len(r.json())
        next_url = r.links.get("next", {}).get("url")
    return seen, times


def export(http: httpx.Client, url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    lines = 0
    with http.stream("GET", url, params={"stream": "true"}, timeout=PHASE_DEADLINE_S) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                lines += 1
    return lines, time.perf_counter() - t0


def bare_import_rss() -> float:
    out = subprocess.run(
        [sys.executable, "-c", BARE_IMPORT], capture_output=True, text=True, timeout=120
    )
    return int(out.stdout.strip()) / 1024


def bare_page(page_file: Path, requests: int) -> tuple[list[float], float]:
    """The bare app's latencies for ``requests`` GETs of the page, and its RSS after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVE, str(port), str(page_file)])
    try:
        url = f"http://127.0.0.1:{port}/api/v1/machines"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("the bare app exited")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        times = []
        with httpx.Client(timeout=30) as http:
            for _ in range(requests):
                t0 = time.perf_counter()
                http.get(url).raise_for_status()
                times.append(time.perf_counter() - t0)
        return times, rss_mb(proc.pid)
    finally:
        stop_proc(proc, timeout=10)


@dataclass
class Lists:
    """``count`` full lists against one daemon: page latencies, exports, CPU and RSS."""

    pages: list[float] = field(default_factory=list)
    exports: list[float] = field(default_factory=list)
    cpu_per_page: list[float] = field(default_factory=list)
    cpu_per_export: list[float] = field(default_factory=list)
    rss_after: list[float] = field(default_factory=list)

    @property
    def growth(self) -> float:
        return self.rss_after[-1] - self.rss_after[0]


def run_lists(daemon: Daemon, machines: int, count: int, label: str) -> Lists:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    url = daemon.url + "/api/v1/machines"
    out = Lists()
    headers = {"Authorization": f"Bearer {daemon.admin_token}"}
    with httpx.Client(headers=headers, timeout=60) as http:
        for n in range(count):
            cpu0 = process_cpu(pid)
            seen, times = walk(http, url, machines // PAGE + 5)
            cpu1 = process_cpu(pid)
            lines, export_s = export(http, url)
            cpu2 = process_cpu(pid)
            if seen != machines or lines != machines:
                raise SystemExit(f"{label} list {n + 1}: {seen} paged, {lines} exported")
            out.pages += times
            out.exports.append(export_s)
            out.cpu_per_page.append((cpu1 - cpu0) / len(times))
            out.cpu_per_export.append(cpu2 - cpu1)
            out.rss_after.append(rss_mb(pid))
            print(
                f"{label} list {n + 1:2d}: {len(times)} pages, p50 "
                f"{statistics.median(times) * 1000:.0f} ms; export {export_s:.2f} s; "
                f"RSS {out.rss_after[-1]:.1f} MB",
                flush=True,
            )
    return out


def apply_inventory(daemon: Daemon, machines: int) -> float:
    text = inventory(machines)
    t0 = time.monotonic()
    r = httpx.post(
        daemon.url + "/api/v1/inventory/apply",
        params={"prune": "false"},
        content=json.dumps({"yaml": text, "env": {}}),
        headers={
            "Authorization": f"Bearer {daemon.admin_token}",
            "content-type": "application/json",
        },
        timeout=APPLY_TIMEOUT_S,
    )
    if r.status_code != 200:
        raise SystemExit(f"inventory apply: {r.status_code} {r.text[:300]}")
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--lists", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    base_rss = bare_import_rss()
    print(f"bare python -c 'import fastapi, sqlalchemy, uvicorn': {base_rss:.1f} MB", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.prepare()
        daemon.start(timeout=60)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        try:
            time.sleep(3)
            rss_empty = rss_mb(pid)
            print(f"daemon RSS empty: {rss_empty:.1f} MB", flush=True)
            apply_s = apply_inventory(daemon, args.machines)
            time.sleep(2)
            rss_applied = rss_mb(pid)
            print(
                f"inventory apply of {args.machines} machines: {apply_s:.1f} s; "
                f"RSS after: {rss_applied:.1f} MB",
                flush=True,
            )
            applied = run_lists(daemon, args.machines, args.lists, "applied")
            with httpx.Client(headers={"Authorization": f"Bearer {daemon.admin_token}"}) as h:
                first = h.get(daemon.url + "/api/v1/machines", params={"limit": PAGE}).json()
            page_file = Path(tmp) / "page.json"
            page_file.write_text(json.dumps(first))

            cpu0, t0 = process_cpu(pid), time.monotonic()
            time.sleep(args.idle)
            idle = (process_cpu(pid) - cpu0) / (time.monotonic() - t0)
            rss_idle = rss_mb(pid)

            t0 = time.monotonic()
            cli = subprocess.run(
                [sys.executable, "-m", "provisiond", "machines", "list", "--json"],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=PHASE_DEADLINE_S,
                check=False,
            )
            cli_s = time.monotonic() - t0
            cli_count = len(json.loads(cli.stdout)) if cli.returncode == 0 else -1
        finally:
            daemon.stop()

        # The same data after a restart: what the machines cost without the apply's heap.
        daemon.start(timeout=60)
        assert daemon.proc is not None
        try:
            time.sleep(3)
            rss_restarted = rss_mb(daemon.proc.pid)
            print(f"daemon restarted at {args.machines} machines: RSS {rss_restarted:.1f} MB")
            restarted = run_lists(daemon, args.machines, args.lists, "restarted")
        finally:
            daemon.stop()

        bare_times, bare_rss = bare_page(page_file, min(len(applied.pages), 400))

    ms = [t * 1000 for t in applied.pages + restarted.pages]
    bare_ms = [t * 1000 for t in bare_times]
    exports = applied.exports + restarted.exports
    after_apply = max(applied.rss_after[-1], rss_idle)
    after_restart = restarted.rss_after[-1]
    growth = max(applied.growth, restarted.growth)
    p50, p99 = statistics.median(ms), pct(ms, 0.99)
    print()
    print(f"load average at end: {os.getloadavg()}")
    print(
        f"baseline: bare python with fastapi, sqlalchemy, uvicorn {base_rss:.1f} MB; "
        f"bare FastAPI app serving the same page of {PAGE}: p50 {statistics.median(bare_ms):.1f}"
        f" ms, p99 {pct(bare_ms, 0.99):.1f} ms, RSS {bare_rss:.1f} MB"
    )
    print(
        f"daemon RSS: empty {rss_empty:.1f} MB, after apply {rss_applied:.1f} MB, after list 1 "
        f"{applied.rss_after[0]:.1f} MB, after list {args.lists} {applied.rss_after[-1]:.1f} MB,"
        f" after {args.idle:.0f} s idle {rss_idle:.1f} MB; restarted {rss_restarted:.1f} MB, "
        f"after list 1 {restarted.rss_after[0]:.1f} MB, after list {args.lists} "
        f"{after_restart:.1f} MB"
    )
    cpu_page = statistics.median(applied.cpu_per_page + restarted.cpu_per_page)
    cpu_export = statistics.median(applied.cpu_per_export + restarted.cpu_per_export)
    print(
        f"daemon CPU: {cpu_page * 1000:.1f} ms per page of {PAGE}, {cpu_export:.2f} s per "
        f"export of {args.machines} (medians over lists; wall times below include the load)"
    )
    print(
        f"CLI 'machines list --json': {cli_count} machines in {cli_s:.1f} s "
        f"{verdict(cli_count == args.machines)}"
    )
    for label, value in (
        ("daemon that applied them", after_apply),
        ("daemon restarted on them", after_restart),
    ):
        print(
            f"RSS at {args.machines} machines after {args.lists} lists, {label}: {value:.1f} MB "
            f"(target <= {TARGET_RSS_MB:.0f} MB) {verdict(value <= TARGET_RSS_MB)}"
        )
    print(
        f"RSS growth over {args.lists} lists: {growth:+.1f} MB (worse of the two daemons; "
        f"target <= {TARGET_GROWTH_MB:.0f} MB) {verdict(growth <= TARGET_GROWTH_MB)}"
    )
    print(
        f"GET /machines page of {PAGE}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(ms)} "
        f"pages (target <= {TARGET_PAGE_MS:.0f} ms; bare app p99 {pct(bare_ms, 0.99):.1f} ms) "
        f"{verdict(p99 <= TARGET_PAGE_MS)}"
    )
    export_p50 = statistics.median(exports)
    print(
        f"GET /machines?stream=true, all {args.machines}: p50 {export_p50:.2f} s, max "
        f"{max(exports):.2f} s (target <= {TARGET_EXPORT_S} s, the unpaged list before) "
        f"{verdict(export_p50 <= TARGET_EXPORT_S)}"
    )
    print(
        f"idle CPU over {args.idle:.0f} s at {args.machines} machines: {idle * 100:.2f}% of a "
        f"core (target <= {TARGET_IDLE_CPU * 100:.0f}%) {verdict(idle <= TARGET_IDLE_CPU)}"
    )


if __name__ == "__main__":
    main()
