"""Disk-image deploy, request -> ``active``, per phase, N=1 and N=3; the image write
against the plain pipeline in the same ramdisk, in the same run (issue 12).

Two targets, each measured against a baseline taken in the same run:

1. the agent's image write (download, gunzip, sha256 check, write, fsync) within 10%
   of ``wget -O- URL | gzip -d | dd of=/dev/vda bs=4M oflag=direct`` typed into the
   same deploy ramdisk (busybox; the ramdisk has no curl);
2. request -> ``active`` for N=1 within 15% of bare PXE to the ramdisk's phone-home +
   that pipeline's write + one disk boot to cloud-init's phone-home.

- **bare** (:class:`tests.bench.disk_chain.DiskChain`, rack ``bdsk-bare``,
  10.219.0.0/24): one 1 GiB guest with a 3 GiB disk; QEMU started directly; a plain
  dnsmasq and ``http.server`` serving the ramdisk, the seed and ``disk.raw.gz``. Per
  round: ramdisk boot, both writes (order alternating over rounds, the disk reset
  before each), the seed file written (not timed), the disk booted (``-boot c``).
- **provisiond** (:class:`~provisiond.rack.scenario.Scenario` rack ``bdsk``,
  10.220.0.0/24, ``rounds x 4`` guests like the bare one, the image registered as
  ``debian-12``), discovered and inspected first (not timed); then per round one
  allocation (N=1) and three at once (N=3), fresh machines each time. Each guest's
  clock starts at its ``POST /allocations``; phases come from the deployments API
  (seconds since the power-cycle, placed on that clock by the ``power_cycle`` event).

Steps run one after another (2 CPUs: never two chains at once); the order of bare and
provisiond alternates over rounds. Other sessions may share the machine, so each step
prints its peak load average and the CPUs used by everything that is not this bench
(:class:`tests.bench.busy.Busy`); a verdict from a busy step says little.

    .venv/bin/python tests/bench/bench_disk_deploy.py [--rounds 1] [--quick]

Needs root, qemu-system-x86, ipxe-qemu and dnsmasq, and builds (or reuses) the
ramdisk and the Debian disk image. Every process is stopped by PID and both
namespaces are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisiond.errors import ProvisiondError  # noqa: E402
from provisiond.rack.disk_image import build_disk_image  # noqa: E402
from provisiond.rack.guest_image import build_guest_image  # noqa: E402
from provisiond.rack.scenario import Scenario, ScenarioError  # noqa: E402
from tests.bench.bench_deploy import power_cycle_at  # noqa: E402
from tests.bench.busy import Busy  # noqa: E402
from tests.bench.disk_chain import DiskChain, RoundResult, keypair  # noqa: E402
from tests.bench.pxe_chain import ChainError, loadavg  # noqa: E402

IMAGE = "debian-12"
SIZES = (1, 3)
WRITE_TARGET_PCT, ACTIVE_TARGET_PCT = 10.0, 15.0
RAM_MIB, DISK_MIB = 1024, 3072
DEPLOY_TIMEOUT_S = 1500.0
#: (label, from phase or None for the request / QEMU start, to phase).
STAGES = (
    ("request -> ramdisk callback", None, "ramdisk_callback"),
    ("ramdisk cb -> image written", "ramdisk_callback", "image_written"),
    ("image written -> disk boot", "image_written", "disk_boot"),
    ("disk boot -> OS callback", "disk_boot", "os_callback"),
    ("OS callback -> active", "os_callback", "agent_heartbeat"),
    ("request -> OS callback", None, "os_callback"),
    ("request -> active", None, "agent_heartbeat"),
)


def say(line: str) -> None:
    print(f"  {line}", flush=True)


def deploy(sc: Scenario, names: list[str], key: str) -> list[dict[str, Any]]:
    """Allocate ``names`` at once with the disk image; per machine, its phases (seconds
    since its request) and the deployment's ``image_write`` figures."""
    requested: dict[str, float] = {}
    ids = []
    for name in names:
        requested[name] = time.time()
        ids.extend(sc.allocate([name], [key], image=IMAGE))
    allocations = sc.wait_allocations(ids, timeout=DEPLOY_TIMEOUT_S)
    failed = [
        f"{a['machine']}: {a['failure_reason']}" for a in allocations if a["state"] != "ready"
    ]
    if failed:
        raise ScenarioError("deploy failed: " + "; ".join(failed))
    out = []
    for name in names:
        record = sc.deployments(name)[0]
        if record["kind"] != "deploy" or record["outcome"] != "active":
            raise ScenarioError(
                f"{name}: latest deployment is {record['kind']}/{record['outcome']}"
            )
        offset = power_cycle_at(sc, name, requested[name]) - requested[name]
        phases = {
            p["phase"]: offset + p["seconds"] for p in record["phases"] if p["seconds"] is not None
        }
        out.append({"phases": phases, "write": record.get("image_write") or {}})
    return out


def med(values: list[float], fmt: str = ".1f") -> str:
    return format(statistics.median(values), fmt) if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1, help="rounds of bare, N=1, N=3")
    parser.add_argument("--quick", action="store_true", help="N=1 only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and taps")
    missing = [t for t in ("dnsmasq", "qemu-system-x86_64") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install dnsmasq qemu-system-x86")
    sizes = (1,) if args.quick else SIZES
    print(f"bench_disk_deploy: start, {loadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-disk-deploy-"))
    image = build_guest_image(log=say)
    disk = build_disk_image(log=say)
    with disk.gz.open("rb") as f:  # into the page cache, as provisiond's copy will be
        while f.read(8 << 20):
            pass
    sc = Scenario(
        "bdsk", args.rounds * sum(sizes), work / "provisiond", subnet="10.220.0.0/24",
        ipv6_prefix="fd00:220::/64", log=say, ram_mib=RAM_MIB, disk_mib=DISK_MIB,
        disk_image=IMAGE,
    )  # fmt: skip
    chain = DiskChain(
        "bdsk-bare", 1, work / "bare", image, subnet="10.219.0.0/24",
        ipv6_prefix="fd00:219::/64", ram_mib=RAM_MIB, disk=disk, disk_mib=DISK_MIB, log=say,
    )  # fmt: skip
    busy = Busy(work)
    busy.start()
    bare: list[RoundResult] = []
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    ok = False
    try:
        sc.up()
        chain.up()
        assert sc.rack is not None
        found = sc.discover()
        started = time.monotonic()
        sc.inspect_all(timeout=600)
        say(
            f"discovered {found['responders']} BMCs; inspected {len(sc.rack.guests)} machines "
            f"in {time.monotonic() - started:.0f}s (not timed); {busy.since_last()}"
        )
        names = iter(g.name for g in sc.rack.guests)
        _, key = keypair()
        for r in range(args.rounds):
            order: tuple[str, ...] = ("pipeline", "agent") if r % 2 == 0 else ("agent", "pipeline")
            order += ("fullblock",)  # context only, always last
            steps: list[int | str] = ["bare", *sizes] if r % 2 == 0 else [*sizes, "bare"]
            for step in steps:
                if step == "bare":
                    res = chain.round(order)
                    bare.append(res)
                    writes = ", ".join(f"{w.kind} {w.seconds:.1f}s" for w in res.writes)
                    say(
                        f"round {r + 1} bare: ramdisk {res.ramdisk:.1f}s, {writes}, disk boot "
                        f"{res.disk_boot:.1f}s (seed file on {res.seeded}); {busy.since_last()}"
                    )
                else:
                    assert isinstance(step, int)
                    deployed = deploy(sc, [next(names) for _ in range(step)], key)
                    runs[step].extend(deployed)
                    shown = " ".join(
                        sorted(f"{d['phases']['agent_heartbeat']:.1f}" for d in deployed)
                    )
                    say(f"round {r + 1} N={step} request -> active s: {shown}; {busy.since_last()}")
        ok = True
    except (ChainError, ScenarioError, ProvisiondError) as exc:
        print(f"bench_disk_deploy failed: {exc}\n{sc.diagnostics()}\n  logs kept in {work}")
        raise SystemExit(1) from None
    finally:
        busy.stop.set()
        chain.down()
        sc.down()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
    report(bare, runs, disk.info())
    print(f"bench_disk_deploy: end, {loadavg()}")


def report(
    bare: list[RoundResult], runs: dict[int, list[dict[str, Any]]], info: dict[str, Any]
) -> None:
    raw_mb, gz_mb = info["virtual_size"] / 1e6, info["gz_size"] / 1e6
    print(
        f"\nimage write in one deploy ramdisk (bare rack; {RAM_MIB} MiB guest, {DISK_MIB} MiB "
        f"virtio disk; {raw_mb:.0f} MB raw, {gz_mb:.0f} MB gzip), seconds from the SSH side:"
    )
    kinds = ("pipeline", "agent", "fullblock")
    print(f"  {'round':<6}{'order':<29}" + "".join(f"{k + ' s':>12}{'MB/s':>7}" for k in kinds)
          + "   agent's own: s, MB/s, zeroed MB")  # fmt: skip
    for i, res in enumerate(bare, 1):
        cells = "".join(
            f"{res.write(k).seconds:>12.1f}{raw_mb / res.write(k).seconds:>7.1f}" for k in kinds
        )
        w = res.write("agent").writer
        print(
            f"  {i:<6}{', '.join(x.kind for x in res.writes):<29}{cells}"
            f"   {w.get('seconds')}, {w.get('mb_s')}, {int(w.get('zeroed_bytes') or 0) / 1e6:.0f}"
        )
    print(
        "  pipeline: wget -O- URL | gzip -d | dd of=/dev/vda bs=4M oflag=direct (busybox); "
        "fullblock: + iflag=fullblock;\n  agent: python3 image_writer.py --target /dev/vda "
        "(download, gunzip, sha256, write, fsync) to its image_written line"
    )
    pipe_s = statistics.median(r.write("pipeline").seconds for r in bare)
    agent_s = statistics.median(r.write("agent").seconds for r in bare)
    full_s = statistics.median(r.write("fullblock").seconds for r in bare)
    for n, deployed in runs.items():
        writes = [d["write"] for d in deployed if d["write"]]
        span = [d["phases"]["image_written"] - d["phases"]["image_download"] for d in deployed
                if "image_download" in d["phases"]]  # fmt: skip
        print(
            f"  provisiond N={n}, its own writes: image_write {med([w['seconds'] for w in writes])}"
            f"s at {med([w['mb_s'] for w in writes])} MB/s (median), image_download -> "
            f"image_written {med(span)}s"
        )

    cols = [("bare", [r.timeline() for r in bare])]
    cols += [(f"pvd N={n}", [d["phases"] for d in runs[n]]) for n in runs]
    first: dict[str, float] = {}
    for _, rows in cols:
        for phases in rows:
            for phase, s in phases.items():
                first[phase] = min(s, first.get(phase, s))
    print(
        "\nper-phase medians, seconds since the request (pvd: POST /allocations) or the QEMU"
        "\nstart (bare: its ramdisk boot's HTTP phases, + the pipeline write, + its disk boot):"
    )
    print(f"  {'phase':<20}" + "".join(f"{title:>11}" for title, _ in cols))
    for phase in sorted(first, key=first.__getitem__):
        row = [med([p[phase] for p in rows if phase in p], ".2f") for _, rows in cols]
        print(f"  {phase:<20}" + "".join(f"{c:>11}" for c in row))

    print(f"\n  {'stage (median seconds)':<28}" + "".join(f"{title:>11}" for title, _ in cols))
    totals: dict[str, float] = {}
    for label, start, end in STAGES:
        row = []
        for title, rows in cols:
            values = [p[end] - (p[start] if start else 0.0) for p in rows
                      if end in p and (start is None or start in p)]  # fmt: skip
            row.append(med(values))
            if label == "request -> active" and values:
                totals[title] = statistics.median(values)
        print(f"  {label:<28}" + "".join(f"{c:>11}" for c in row))
    base = statistics.median(r.timeline()["os_callback"] for r in bare)
    print(f"  (bare: no request, BMC, SSH connect, seed step or agent; its total is {base:.1f}s)")

    write_pct = (agent_s / pipe_s - 1) * 100
    print(
        f"\ntarget 1: agent write {agent_s:.1f}s ({raw_mb / agent_s:.1f} MB/s) vs pipeline "
        f"{pipe_s:.1f}s ({raw_mb / pipe_s:.1f} MB/s) in the same ramdisk: {write_pct:+.1f}%; "
        f"within {WRITE_TARGET_PCT:.0f}%: {'met' if write_pct <= WRITE_TARGET_PCT else 'MISSED'}"
        f" (vs the fullblock pipeline {full_s:.1f}s: {(agent_s / full_s - 1) * 100:+.1f}%)"
    )
    if "pvd N=1" in totals:
        active_pct = (totals["pvd N=1"] / base - 1) * 100
        to_cb = statistics.median(d["phases"]["os_callback"] for d in runs[1])
        print(
            f"target 2: N=1 request -> active {totals['pvd N=1']:.1f}s vs bare ramdisk + pipeline"
            f" + disk boot {base:.1f}s: {active_pct:+.1f}%; within {ACTIVE_TARGET_PCT:.0f}%: "
            f"{'met' if active_pct <= ACTIVE_TARGET_PCT else 'MISSED'} (request -> OS callback "
            f"alone: {(to_cb / base - 1) * 100:+.1f}%)"
        )
        by_hand = statistics.median(
            r.ramdisk + r.write("agent").seconds + r.disk_boot for r in bare
        )
        print(
            f"  context: bare with the agent's write instead of the pipeline {by_hand:.1f}s: N=1 "
            f"request -> active {(totals['pvd N=1'] / by_hand - 1) * 100:+.1f}%, request -> OS "
            f"callback {(to_cb / by_hand - 1) * 100:+.1f}%"
        )


if __name__ == "__main__":
    main()
