"""PXE boot to the OS callback: N QEMU guests through provisiond and through a bare chain.

Issue 4's target: provisiond adds at most 10% to power-on -> callback, for N=1 and N=4
guests booting at once (QEMU on TCG, the guest image of the virtual rack).

- **provisiond**: :class:`~provisiond.rack.scenario.Scenario` brings up rack ``bpxe``
  (netns ``pvd-bpxe``, 10.217.0.0/24, fd00:217::/64) with ``provisiond serve`` and its
  supervised dnsmasq and boot HTTP listener inside, the images registered and the
  rack's inventory applied (machines ``enrolled``). A guest's first PXE boot takes
  the daemon's whole chain: DHCP from its dnsmasq, ``/boot/ipxe`` -> the per-MAC
  script (which starts the inspection), kernel and initrd from ``/images``, the seed
  from ``/meta``, ``POST /boot/callback``. The callback time is the ``os_callback``
  boot event's timestamp (events API).
- **bare**: :class:`tests.bench.pxe_chain.BareChain` (rack ``bpxe-bare``, 10.218.0.0/24):
  a plain dnsmasq with the daemon's boot-time options, ``http.server`` serving one
  static iPXE script, the same kernel and initrd and a static user-data, and a
  callback receiver. The callback time is the receiver's clock.

**What is timed, and why it is fair**: in both chains this benchmark starts each
guest's QEMU itself, with QemuBackend's own command line (``-boot n``), all N at the
same instant, and times from that start to the phone_home POST. No BMC is in the timed
path of either chain (the BMC power-cycle is part of bench_deploy's deploy path), so
both chains start their guests identically. Each guest is killed as soon as its
callback is seen (polled every 0.25 s: provisiond's events API over one keep-alive
connection, the bare receiver's file), so the daemon's next step, the SSH agent
install, never competes for CPU with guests still booting; the bare chain's guests
are killed the same way. Every provisiond sample is a never-booted machine (the rack
has one guest per sample); the bare chain reuses its guests (it keeps no state).
Chains alternate per round; the load average is printed, as the 2 CPUs are shared.

    .venv/bin/python tests/bench/bench_pxe_boot.py [--rounds-1 3] [--rounds-4 3]

Needs root (namespaces, taps), qemu-system-x86, ipxe-qemu and dnsmasq. Every process
is stopped by PID and both namespaces are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisiond.rack.guest_image import build_guest_image  # noqa: E402
from provisiond.rack.scenario import Scenario, ScenarioError  # noqa: E402
from tests.bench.pxe_chain import (  # noqa: E402
    BareChain,
    ChainError,
    boot_to_callback,
    loadavg,
    median_max,
)

SIZES = (1, 4)
TARGET_PCT = 10.0
# A killed guest cannot take the agent: fail its inspection at the first SSH refusal.
CONFIG = "ssh_connect_attempts = 1\n"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def boot_events(api: httpx.Client, since: float, event: str = "") -> dict[str, dict[str, float]]:
    """Machine -> boot phase -> wall-clock time it was first reached at or after ``since``."""
    params = {"kind": "boot", "since": iso(since), "limit": "1000"}
    if event:
        params["event"] = event
    r = api.get("/events", params=params)
    r.raise_for_status()
    seen: dict[str, dict[str, float]] = {}
    for row in r.json():
        at = datetime.fromisoformat(row["at"])
        stamp = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        phases = seen.setdefault(row["machine"], {})
        phases[row["event"]] = min(stamp, phases.get(row["event"], stamp))
    return seen


def callbacks(api: httpx.Client, since: float) -> dict[str, float]:
    return {m: p["os_callback"] for m, p in boot_events(api, since, "os_callback").items()}


def phase_table(phases: dict[tuple[str, int], list[dict[str, float]]]) -> None:
    """Per-phase medians, seconds since the QEMU start, for every chain and N."""
    columns = [(c, n) for n in SIZES for c in ("bare", "provisiond")]
    first: dict[str, float] = {}
    for boots in phases.values():
        for boot in boots:
            for phase, s in boot.items():
                first[phase] = min(s, first.get(phase, s))
    print("\nper-phase medians, seconds since the QEMU start (provisiond's record starts at the")
    print("per-MAC script, where it enrolls the machine; the bare server sees only HTTP phases):")
    print(f"  {'phase':<13}" + "".join(f"{f'{c[:4]} N={n}':>11}" for c, n in columns))
    for phase in sorted(first, key=first.__getitem__):
        cells = []
        for key in columns:
            values = [b[phase] for b in phases[key] if phase in b]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        print(f"  {phase:<13}" + "".join(f"{c:>11}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds-1", type=int, default=3, help="rounds with 1 guest")
    parser.add_argument("--rounds-4", type=int, default=3, help="rounds with 4 guests")
    args = parser.parse_args()
    rounds = {1: args.rounds_1, 4: args.rounds_4}
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and taps")
    missing = [t for t in ("dnsmasq", "qemu-system-x86_64") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install dnsmasq qemu-system-x86")
    print(f"bench_pxe_boot: start, {loadavg()}")
    plan = [
        (n, chain)
        for n in SIZES
        for r in range(rounds[n])
        for chain in (("bare", "provisiond") if r % 2 == 0 else ("provisiond", "bare"))
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-pxe-boot-"))
    image = build_guest_image()
    sc = Scenario(
        "bpxe",
        sum(n * rounds[n] for n in SIZES),
        work / "provisiond",
        subnet="10.217.0.0/24",
        ipv6_prefix="fd00:217::/64",
        extra_config=CONFIG,
        log=lambda line: print(f"  {line}"),
    )
    bare = BareChain("bpxe-bare", max(SIZES), work / "bare", image, ram_mib=sc.ram_mib)
    phases: dict[tuple[str, int], list[dict[str, float]]] = {
        (c, n): [] for n in SIZES for c in ("bare", "provisiond")
    }
    results: dict[tuple[str, int], list[float]] = {
        (c, n): [] for n in SIZES for c in ("bare", "provisiond")
    }
    ok = False
    stack = contextlib.ExitStack()
    try:
        sc.up()
        bare.up()
        assert sc.rack is not None
        # One keep-alive client for the callback polls: a new client per poll costs
        # this process tens of ms of CPU each, which only the provisiond chain would pay.
        api = stack.enter_context(sc.api())
        states = {m["name"]: m["state"] for m in sc.machines()}
        if set(states.values()) != {"enrolled"}:
            raise SystemExit(f"provisiond's machines should all be enrolled: {states}")
        fresh = iter(sc.rack.guests)
        for n, chain in plan:
            if chain == "bare":
                booted = bare.boot(bare.guests[:n])
            else:
                guests = [next(fresh) for _ in range(n)]
                since = time.time()
                boots = boot_to_callback(
                    sc.rack.netns, sc.rack.accel, guests, functools.partial(callbacks, api, since)
                )
                events = boot_events(api, since)
                booted = {
                    name: {
                        phase: at - boot.started
                        for phase, at in events.get(name, {}).items()
                        if at <= boot.callback
                    }
                    for name, boot in boots.items()
                }
            phases[(chain, n)].extend(booted.values())
            seconds = {name: p["os_callback"] for name, p in booted.items()}
            results[(chain, n)].extend(seconds.values())
            shown = " ".join(f"{s:.1f}" for s in sorted(seconds.values()))
            print(f"  round N={n} {chain:10s} power-on -> callback s: {shown}  ({loadavg()})")
        ok = True
    except (ChainError, ScenarioError) as exc:
        print(f"bench_pxe_boot failed: {exc}\n  logs kept in {work}")
        raise SystemExit(1) from None
    finally:
        stack.close()
        bare.down()
        sc.down()
        if ok:
            shutil.rmtree(work, ignore_errors=True)

    print(
        "\nQEMU started directly with QemuBackend's command line in both chains (no BMC in the"
        "\ntimed path); seconds from QEMU start to the phone_home POST; guests killed at callback."
    )
    print(f"{'chain':<11} {'N':>2} {'samples':>7} {'median s':>9} {'max s':>7} {'overhead':>9}")
    verdicts = []
    for n in SIZES:
        b_med, b_max = median_max(results[("bare", n)])
        p_med, p_max = median_max(results[("provisiond", n)])
        pct = (p_med / b_med - 1) * 100
        verdicts.append(pct <= TARGET_PCT)
        for chain, med, mx, extra in (
            ("bare", b_med, b_max, ""),
            ("provisiond", p_med, p_max, f"{pct:+8.1f}%"),
        ):
            count = len(results[(chain, n)])
            print(f"{chain:<11} {n:>2} {count:>7} {med:>9.2f} {mx:>7.2f} {extra:>9}")
    met = "met" if all(verdicts) else "MISSED"
    print(f"overhead = provisiond median / bare median - 1; target <= {TARGET_PCT:.0f}%: {met}")
    phase_table(phases)
    print(f"bench_pxe_boot: end, {loadavg()}")


if __name__ == "__main__":
    main()
