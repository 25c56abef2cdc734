"""Benchmark: 1,000 simulated BMCs, pyghmi versus ipmitool, in one run.

Starts ``provisiond sim bmc`` (as ``python -m provisiond sim bmc``) in a child
process on a free loopback port range, then:

1. pyghmi ``Command`` login + ``get_power`` on every BMC from a thread pool;
2. ``ipmitool -I lanplus -C 3 ... chassis power status`` through ``xargs -P16``.

Prints wall time and client CPU per BMC for both, and the simulator's start-up time,
RSS and CPU. Everything is bounded: one pass per client, per-phase deadlines, and the
simulator is stopped by PID on every exit path.

    .venv/bin/python tests/bench/bench_bmc_sim.py [--count 1000] [--workers 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    PHASE_DEADLINE_S,
    bench_ipmitool,
    cpu_seconds,
    process_cpu,
    rss_mb,
    start_simulator,
    stop,
)


def bench_pyghmi(host: str, ports: list[int], workers: int) -> tuple[float, float, int]:
    from pyghmi.ipmi import command

    def one(port: int) -> str:
        cmd = command.Command(bmc=host, port=port, userid="admin", password="password")
        return str(cmd.get_power()["powerstate"])

    cpu0, wall0 = cpu_seconds(resource.RUSAGE_SELF), time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, port) for port in ports]
        done, pending = wait(futures, timeout=PHASE_DEADLINE_S)
        for future in pending:
            future.cancel()
    wall = time.monotonic() - wall0
    ok = sum(1 for f in done if f.exception() is None and f.result() in ("on", "off"))
    return wall, cpu_seconds(resource.RUSAGE_SELF) - cpu0, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=200, help="pyghmi thread pool size")
    parser.add_argument("--latency-ms", type=float, default=2.0)
    args = parser.parse_args()
    ipmitool = shutil.which("ipmitool") or "/usr/bin/ipmitool"

    proc, first, startup = start_simulator(args.count, args.latency_ms)
    host, ports = "127.0.0.1", list(range(first, first + args.count))
    try:
        print(f"simulator: {args.count} BMCs on {host}:{first}-{ports[-1]}, "
              f"latency {args.latency_ms:g} ms")  # fmt: skip
        print(f"  start-up (spawn to ready line): {startup:.2f} s, RSS {rss_mb(proc.pid):.0f} MB")

        sim0 = process_cpu(proc.pid)
        wall, cpu, ok = bench_pyghmi(host, ports, args.workers)
        sim_cpu = process_cpu(proc.pid) - sim0
        print(f"pyghmi login+get_power, {args.workers} threads: {ok}/{args.count} ok, "
              f"wall {wall:.2f} s, client CPU {cpu / args.count * 1000:.2f} ms/BMC, "
              f"simulator CPU {sim_cpu / args.count * 1000:.2f} ms/BMC")  # fmt: skip
        print(f"  simulator RSS after pyghmi sessions: {rss_mb(proc.pid):.0f} MB")

        if not os.path.exists(ipmitool):
            print("ipmitool: not installed (apt-get install ipmitool); skipped")
            return
        sim0 = process_cpu(proc.pid)
        wall_i, cpu_i, ok_i = bench_ipmitool(ipmitool, host, ports)
        sim_cpu = process_cpu(proc.pid) - sim0
        print(f"ipmitool power status, xargs -P16: {ok_i}/{args.count} ok, "
              f"wall {wall_i:.2f} s, client CPU {cpu_i / args.count * 1000:.2f} ms/BMC, "
              f"simulator CPU {sim_cpu / args.count * 1000:.2f} ms/BMC")  # fmt: skip
        print(f"pyghmi is {wall_i / wall:.1f}x ipmitool's speed (wall)")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
