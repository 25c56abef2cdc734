"""``provisiond inventory apply`` of a large inventory: 10,000 machines in 250 racks.

Generates one inventory file (250 racks of 42U, each with a 41-port switch at U42,
a 0U PDU with 40 outlets and 40 machines at U1-U40; every machine has a wired PXE
NIC, a second NIC, an IPMI BMC whose password comes from ``password_env``, and an
outlet), then runs a real ``provisiond serve`` on SQLite and on a throwaway
PostgreSQL and times the real CLI, as an operator runs it:

- **first apply** into an empty database (everything is created);
- **re-apply** of the same file (nothing changes: it must write nothing, and the
  benchmark checks that the event log and the rows are untouched).

Target: each <= 5 s, the CLI's wall time (file read, upload, plan, write in one
transaction, answer, printed summary). The baseline in the same run is what any
apply of this file costs at least: parsing and validating the YAML alone,
in-process (no database). The target is wall time, which on a shared machine
depends on what else runs, so the benchmark also prints the CPU time the CLI and
the daemon spent, and the load average when it started.

    .venv/bin/python tests/bench/bench_inventory_apply.py [--racks 250] [--per-rack 40]
        [--skip-postgres]

Loopback only; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.benchlib import cpu_seconds, process_cpu  # noqa: E402
from tests.support import pg  # noqa: E402
from tests.support.daemon import Daemon, cli  # noqa: E402
from tests.support.inventory_files import generate  # noqa: E402

TARGET_S = 5.0
CLI_TIMEOUT_S = 300.0  # one apply; the whole run is bounded by the steps' count
PASSWORD_ENV = "BENCH_BMC_PASSWORD"


def baseline(text: str) -> tuple[float, float]:
    """(wall s, CPU s) to parse and validate the file alone, in this process (no database)."""
    from provisiond.inventory.spec import parse

    started, cpu0 = time.perf_counter(), time.process_time()
    doc, problems = parse(text)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu0
    assert not problems, problems[:3]
    assert len(doc.of("machine")) > 0
    return took, cpu


def counts(url: str) -> dict[str, Any]:
    """Rows per table, and the newest event and machine update (a no-op apply moves none)."""
    from sqlalchemy import func
    from sqlmodel import select

    from provisiond.db import Database
    from provisiond.models import Bmc, Event, Machine, Nic, Outlet, SwitchPort

    db = Database(url)
    try:
        with db.read_session() as session:
            out: dict[str, Any] = {
                model.__name__: session.exec(select(func.count()).select_from(model)).one()
                for model in (Machine, Nic, Bmc, SwitchPort, Outlet, Event)
            }
            out["last_event"] = session.exec(select(func.max(Event.id))).one()
            out["last_update"] = session.exec(select(func.max(Machine.updated_at))).one()
            out["plugged"] = session.exec(
                select(func.count()).select_from(Outlet).where(Outlet.machine_id.is_not(None))  # type: ignore[union-attr]
            ).one()
            return out
    finally:
        db.dispose()


def timed_apply(daemon: Daemon, file: Path, expect: str) -> tuple[float, float, float]:
    """(wall s of the CLI, CLI CPU s, daemon CPU s) for one ``inventory apply``; checks
    its summary line."""
    assert daemon.proc is not None
    cpu0, cli0 = process_cpu(daemon.proc.pid), cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = cli(
        "inventory",
        "apply",
        str(file),
        env={**daemon.env, PASSWORD_ENV: "bench-secret"},
        timeout=CLI_TIMEOUT_S,
    )
    wall = time.perf_counter() - started
    cpu = process_cpu(daemon.proc.pid) - cpu0
    cli_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cli0
    last = result.stdout.strip().splitlines()[-1:] or [""]
    if result.returncode != 0 or expect not in last[0]:
        raise SystemExit(
            f"inventory apply failed (exit {result.returncode}): {last[0]!r}\n"
            f"{result.stderr[-2000:]}"
        )
    return wall, cli_cpu, cpu


def run_backend(label: str, db_url: str | None, file: Path, total: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        # No power sync during the run: it would read 10,000 BMCs (loopback addresses
        # where nothing answers) beside the applies being timed.
        extra = {"PROVISIOND_POWER_SYNC_INTERVAL_S": "86400"}
        if db_url:
            extra["PROVISIOND_DATABASE_URL"] = db_url
        daemon = Daemon(Path(tmp) / "data", extra_env=extra)
        daemon.data_dir.mkdir()  # serve.log goes there, whichever the database
        daemon.prepare()
        url = db_url or f"sqlite:///{Path(tmp) / 'data' / 'provisiond.db'}"
        daemon.start(timeout=60)
        try:
            load = os.getloadavg()[0]
            first = timed_apply(daemon, file, f"{total} to create, 0 to update")
            after_first = counts(url)
            again = timed_apply(daemon, file, f"{total} unchanged, 0 to delete")
            after_again = counts(url)
        finally:
            daemon.stop()
        if after_again != after_first:
            raise SystemExit(f"the re-apply wrote: {after_first} -> {after_again}")
        rows = ", ".join(
            f"{k} {v}" for k, v in after_first.items() if k not in ("last_event", "last_update")
        )
        for name, (wall, cli_cpu, cpu) in (("first apply", first), ("re-apply", again)):
            print(f"  {label} {name}: {wall:.1f} s wall; CPU: CLI {cli_cpu:.1f} s, daemon "
                  f"{cpu:.1f} s (load average {load:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip
        print(f"  {label}: rows after the first apply: {rows}; the re-apply wrote none")
        return {"first": first[0], "again": again[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--racks", type=int, default=250)
    parser.add_argument("--per-rack", type=int, default=40)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.racks <= 999 and 1 <= args.per_rack <= 40):
        parser.error("--racks is 1-999 and --per-rack 1-40 (hint: the defaults are 250 and 40)")
    started = time.monotonic()
    machines = args.racks * args.per_rack
    total = machines + 3 * args.racks  # machines, racks, switches and PDUs
    with tempfile.TemporaryDirectory(prefix="bench-inventory-file-") as tmp:
        file = Path(tmp) / "inventory.yaml"
        text = generate(args.racks, args.per_rack, password_env=PASSWORD_ENV)
        file.write_text(text)
        what = f"{machines} machines/{args.racks} racks"
        print(f"bench_inventory_apply: {what}, {len(text) / 1e6:.1f} MB of YAML, loopback only")
        parsed, parsed_cpu = baseline(text)
        print(f"  baseline: parse + validate the YAML alone (in-process, no database): "
              f"{parsed:.1f} s wall, {parsed_cpu:.1f} s CPU")  # fmt: skip
        runs = {"sqlite": run_backend("sqlite", None, file, total)}
        if not args.skip_postgres and pg.available():
            cluster = pg.start_cluster()
            try:
                runs["postgres"] = run_backend("postgres", cluster.url(), file, total)
            finally:
                cluster.stop()
    print(f"summary (target <= {TARGET_S:g} s per apply, wall time of the CLI; "
          f"baseline parse + validate {parsed:.1f} s)")  # fmt: skip
    for label, run in runs.items():
        for key, name in (
            ("first", "inventory apply"),
            ("again", "inventory re-apply (no change)"),
        ):
            took = run[key]
            verdict = "MET" if took <= TARGET_S else "MISSED"
            print(f"  {name} {what} ({label}): {took:.1f} s (target <= {TARGET_S:g} s) {verdict}")
    print(f"  took {time.monotonic() - started:.0f}s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
