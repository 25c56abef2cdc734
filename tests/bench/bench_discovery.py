"""Benchmark: a discovery sweep of 4,096 loopback targets with 1,000 live BMCs, one run.

A ``provisiond sim bmc`` child serves 1,000 BMCs at 2 ms latency on ports
P..P+999; the sweep covers P..P+4095 on 127.0.0.1, so 3,096 targets are empty.
provisiond's discovery service (probe, login with a credential set, enroll into
SQLite) runs twice: the first sweep enrolls, the second must change nothing.

Baselines in the same run, the usual shell tools an operator would script:
``rmcp_ping -t 1`` (OpenIPMI) per target through ``xargs -P128`` to find the
responders, and ``ipmitool ... mc info`` per responder through ``xargs -P16`` to log in.
Bounded: two sweeps, one pass of each tool, each with a deadline.

    .venv/bin/python tests/bench/bench_discovery.py
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchlib import PHASE_DEADLINE_S, start_simulator, stop

from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.executor import BlockingExecutor
from provisiond.machines import discovery
from provisiond.models import CredentialSet
from provisiond.secrets import SecretBox

LIVE, SWEEP = 1000, 4096


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


def shell_baseline(first: int, live_ports: list[int]) -> tuple[float, int, float, int]:
    rmcp_ping = shutil.which("rmcp_ping") or "/usr/bin/rmcp_ping"
    ipmitool = shutil.which("ipmitool") or "/usr/bin/ipmitool"
    started = time.monotonic()
    pinged = subprocess.run(
        ["xargs", "-P128", "-I{}", rmcp_ping, "-t", "1", "-p", "{}", "127.0.0.1"],
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
            "127.0.0.1",
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
    proc, first, _ = start_simulator(LIVE, 2.0)
    if first + SWEEP > 65535:
        stop(proc)
        raise SystemExit("the simulator's port range leaves no room for the sweep; run again")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            services = services_for(Path(tmp))
            for label in ("first sweep", "second sweep"):
                plan = discovery.prepare(services, ["127.0.0.1/32"], f"{first}-{first + SWEEP - 1}")
                started = time.monotonic()
                result = asyncio.run(discovery.discover(services, plan))
                total = time.monotonic() - started
                print(
                    f"provisiond {label}: {result.targets} targets, {result.responders} "
                    f"responders in {result.seconds['probe']:.2f} s; enrolled "
                    f"{len(result.enrolled)}, unchanged {len(result.unchanged)}, failed "
                    f"{len(result.failed)}; login {result.seconds['login']:.2f} s, record "
                    f"{result.seconds['record']:.2f} s, total {total:.2f} s"
                )
            services.close()
        live = list(range(first, first + LIVE))
        probe_wall, found, login_wall, logged = shell_baseline(first, live)
        print(
            f"baseline rmcp_ping -t 1 | xargs -P128: {found} responders in {probe_wall:.2f} s; "
            f"ipmitool mc info | xargs -P16: {logged}/{LIVE} in {login_wall:.2f} s; "
            f"total {probe_wall + login_wall:.2f} s"
        )
        print("targets: responders found in <= 3 s, all enrolled in <= 15 s")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
