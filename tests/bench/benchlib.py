"""Shared pieces of the benchmarks: the simulator child process, ipmitool baseline, /proc reads.

Benchmarks run as plain scripts (``make bench``); they import this by path.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import procs

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"listening on (?P<host>[\d.]+):(?P<first>\d+)-(?P<last>\d+)/udp")
PHASE_DEADLINE_S = 300.0


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_simulator(count: int, latency_ms: float) -> tuple[subprocess.Popen[str], int, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond", "sim", "bmc", "--count", str(count),
         "--base-port", "0", "--latency-ms", str(latency_ms)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = started + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = READY.search(line)
        if match:
            return proc, int(match["first"]), time.monotonic() - started
    proc.kill()
    raise SystemExit(f"simulator did not start: {line!r}")


def bench_ipmitool(ipmitool: str, host: str, ports: list[int]) -> tuple[float, float, int]:
    cpu0, wall0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
    result = subprocess.run(
        ["xargs", "-P16", "-I{}", ipmitool, "-I", "lanplus", "-C", "3", "-H", host,
         "-p", "{}", "-U", "admin", "-P", "password", "-N", "1", "-R", "2",
         "chassis", "power", "status"],
        input="\n".join(map(str, ports)) + "\n", capture_output=True, text=True,
        timeout=PHASE_DEADLINE_S, check=False,
    )  # fmt: skip
    wall = time.monotonic() - wall0
    ok = result.stdout.count("Chassis Power is")
    return wall, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0, ok


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop the simulator by its PID: SIGTERM, then SIGKILL after 10 s."""
    procs.stop(proc, timeout=10)
