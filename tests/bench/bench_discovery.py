"""Benchmark: a discovery sweep of 4,096 loopback targets with 1,000 live BMCs, one run.

A ``provisiond sim bmc`` child serves 1,000 BMCs at 2 ms latency on ports
P..P+999 of a loopback address of its own (127.X.Y.1, so simulators that other runs
keep on 127.0.0.1 never answer this sweep); the sweep covers P..P+4095 there, as
many targets as a /20 on one port, so 3,096 targets are empty. provisiond's
discovery service (probe, login with a credential set, enroll into SQLite) runs
twice: the first sweep enrolls, the second must change nothing. The daemon's
defaults apply (executor_workers, discovery_login_concurrency).

Targets (issue 13): responders found in <= 3 s; all 1,000 enrolled (the first
sweep, probe to commit) in <= 8 s. One line per target says MET or MISSED; the
exit status is 0 either way (timings on a shared machine are noisy).

Baselines in the same run, the usual shell tools an operator would script:
``rmcp_ping -t 1`` (OpenIPMI) per target through ``xargs -P128`` to find the
responders, and ``ipmitool ... mc info`` per responder through ``xargs -P16`` to log in.
Bounded: two sweeps, one pass of each tool, each with a deadline.

    .venv/bin/python tests/bench/bench_discovery.py
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchlib import PHASE_DEADLINE_S, READY, ROOT, stop

from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.executor import BlockingExecutor
from provisiond.machines import discovery
from provisiond.models import CredentialSet
from provisiond.secrets import SecretBox

LIVE, SWEEP = 1000, 4096
LABEL = "discovery /20 1000 BMCs"
RESPONDERS_TARGET_S, ENROLLED_TARGET_S = 3.0, 8.0


def start_simulator(address: str) -> tuple[subprocess.Popen[str], int]:
    """``provisiond sim bmc`` with LIVE BMCs on ``address``; stopped by PID (benchlib.stop)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond", "sim", "bmc", "--count", str(LIVE),
         "--address", address, "--base-port", "0", "--latency-ms", "2.0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = READY.search(line)
        if match:
            return proc, int(match["first"])
    stop(proc)
    raise SystemExit(f"simulator did not start: {line!r}")


def verdict(seconds: float, target: float) -> str:
    return "MET" if seconds <= target else "MISSED"


def services_for(data: Path) -> Services:
    settings = load_settings(None, data_dir=data, discovery_max_targets=SWEEP)
    db = Database(settings.db_url)
    db.upgrade()
    services = Services(
        settings, db, SecretBox.from_key_file(settings.key_file), executor=BlockingExecutor(64)
    )
    with db.transaction() as session:
        session.add(
            CredentialSet(
                name="sim", username="admin", secret_encrypted=services.secrets.encrypt("password")
            )
        )
    return services


def shell_baseline(host: str, first: int, live_ports: list[int]) -> tuple[float, int, float, int]:
    rmcp_ping = shutil.which("rmcp_ping") or "/usr/bin/rmcp_ping"
    ipmitool = shutil.which("ipmitool") or "/usr/bin/ipmitool"
    started = time.monotonic()
    pinged = subprocess.run(
        ["xargs", "-P128", "-I{}", rmcp_ping, "-t", "1", "-p", "{}", host],
        input="\n".join(str(p) for p in range(first, first + SWEEP)) + "\n",
        capture_output=True,
        text=True,
        timeout=PHASE_DEADLINE_S,
        check=False,
    )
    probe_wall = time.monotonic() - started
    found = sum("IPMI" in line for line in pinged.stdout.splitlines())  # "localhost IPMI"
    started = time.monotonic()
    info = subprocess.run(
        [
            "xargs",
            "-P16",
            "-I{}",
            ipmitool,
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            host,
            "-p",
            "{}",
            "-U",
            "admin",
            "-P",
            "password",
            "-N",
            "1",
            "-R",
            "2",
            "mc",
            "info",
        ],
        input="\n".join(map(str, live_ports)) + "\n",
        capture_output=True,
        text=True,
        timeout=PHASE_DEADLINE_S,
        check=False,
    )
    return probe_wall, found, time.monotonic() - started, info.stdout.count("Device ID")


def main() -> None:
    host = f"127.{random.randrange(2, 255)}.{random.randrange(0, 256)}.1"
    proc, first = start_simulator(host)
    if first + SWEEP > 65535:
        stop(proc)
        raise SystemExit("the simulator's port range leaves no room for the sweep; run again")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            services = services_for(Path(tmp))
            print(
                f"executor_workers {services.executor.max_workers}, "
                f"discovery_login_concurrency {services.settings.discovery_login_concurrency}"
            )
            totals: list[tuple[float, float]] = []
            for label in ("first sweep", "second sweep"):
                plan = discovery.prepare(services, [f"{host}/32"], f"{first}-{first + SWEEP - 1}")
                started = time.monotonic()
                result = asyncio.run(discovery.discover(services, plan))
                total = time.monotonic() - started
                totals.append((result.seconds["probe"], total))
                print(
                    f"provisiond {label}: {result.targets} targets, {result.responders} "
                    f"responders in {result.seconds['probe']:.2f} s; enrolled "
                    f"{len(result.enrolled)}, unchanged {len(result.unchanged)}, failed "
                    f"{len(result.failed)}; login {result.seconds['login']:.2f} s, record "
                    f"{result.seconds['record']:.2f} s, total {total:.2f} s"
                )
                if label == "first sweep" and len(result.enrolled) != LIVE:
                    totals[-1] = (totals[-1][0], float("inf"))  # not all enrolled: missed
            services.close()
        live = list(range(first, first + LIVE))
        probe_wall, found, login_wall, logged = shell_baseline(host, first, live)
        print(
            f"baseline rmcp_ping -t 1 | xargs -P128: {found} responders in {probe_wall:.2f} s; "
            f"ipmitool mc info | xargs -P16: {logged}/{LIVE} in {login_wall:.2f} s; "
            f"total {probe_wall + login_wall:.2f} s"
        )
        probe, enrolled = totals[0]
        print(
            f"{LABEL}: responders {probe:.2f} s (target <= {RESPONDERS_TARGET_S:g} s) "
            f"{verdict(probe, RESPONDERS_TARGET_S)}"
        )
        print(
            f"{LABEL}: responders {probe:.2f} s, enrolled {enrolled:.2f} s "
            f"(target <= {ENROLLED_TARGET_S:g} s) {verdict(enrolled, ENROLLED_TARGET_S)}"
        )
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
