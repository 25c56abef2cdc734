"""Deploy request to ``active``, per phase, for 1 and 3 concurrent QEMU guests.

Issue 5's target: the daemon's overhead stays within 10% of a bare PXE boot to the
OS callback, plus the agent install. So the same run measures

- **bare**: :class:`tests.bench.pxe_chain.BareChain` (rack ``bdep-bare``,
  10.218.0.0/24): QEMU started directly (``-boot n``), a plain dnsmasq and
  ``http.server`` with a static script and user-data; seconds from the QEMU start to
  the phone_home POST (its guests are killed at the callback). Its server records
  each request, so its HTTP phases (script, kernel, initrd, seed, callback) print
  beside the daemon's under the same names;
- **provisiond**: :class:`~provisiond.rack.scenario.Scenario` rack ``bdep`` (netns
  ``pvd-bdep``, 10.217.0.0/24), its machines discovered over IPMI and inspected
  first (not timed). Then one allocation per machine through the API, the 1 or 3 of
  them at once, and the whole deploy path: the allocation job, the BMC power-cycle
  over IPMI into PXE, the daemon's chain to the OS callback, the SSH agent install,
  the agent's first heartbeat (``active``). Each guest's clock starts when its
  ``POST /allocations`` is sent. Phase times come from the deployments API (seconds
  since the power-cycle) and are placed on that clock by the ``power_cycle`` boot
  event's timestamp.

The verdict compares medians: (request -> active) minus the agent install
(``agent_install`` -> ``agent_heartbeat``: SSH, upload, service start, first
heartbeat) against the bare PXE -> callback time. The rest of the daemon's path
(allocation, BMC, its iPXE chain, reacting to the callback) counts as overhead. The
chains alternate which goes first from round to round (the 2 CPUs are shared, so the
load average is printed); each round deploys fresh machines (the rack has
``rounds x 4`` guests, inspected at once before the first round).

    .venv/bin/python tests/bench/bench_deploy.py [--rounds 2]

Needs root, qemu-system-x86, ipxe-qemu and dnsmasq; every process is stopped by PID
and both namespaces are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisiond.rack.guest_image import build_guest_image  # noqa: E402
from provisiond.rack.scenario import Scenario, ScenarioError  # noqa: E402
from tests.bench.pxe_chain import (  # noqa: E402
    BareChain,
    ChainError,
    loadavg,
    median_max,
    public_key,
)

SIZES = (1, 3)
TARGET_PCT = 10.0
DEPLOY_TIMEOUT_S = 420.0


def power_cycle_at(sc: Scenario, name: str, since: float) -> float:
    """Wall-clock time of the deploy's ``power_cycle`` boot event."""
    with sc.api() as api:
        r = api.get(
            "/events",
            params={
                "machine": name,
                "kind": "boot",
                "event": "power_cycle",
                "since": datetime.fromtimestamp(since, UTC).isoformat(),
                "order": "asc",
                "limit": 1,
            },
        )
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()
    if not rows:
        raise ScenarioError(f"{name}: no power_cycle boot event after the deploy request")
    at = datetime.fromisoformat(rows[0]["at"])
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def deploy(sc: Scenario, names: list[str], key: str) -> dict[str, dict[str, float]]:
    """Allocate ``names`` at once; per machine, phase -> seconds since its request."""
    requested: dict[str, float] = {}
    ids = []
    for name in names:
        requested[name] = time.time()
        ids.extend(sc.allocate([name], [key]))
    allocations = sc.wait_allocations(ids, timeout=DEPLOY_TIMEOUT_S)
    failed = [
        f"{a['machine']}: {a['failure_reason']}" for a in allocations if a["state"] != "ready"
    ]
    if failed:
        raise ScenarioError("deploy failed: " + "; ".join(failed))
    out: dict[str, dict[str, float]] = {}
    for name in names:
        record = sc.deployments(name)[0]
        if record["kind"] != "deploy" or record["outcome"] != "active":
            raise ScenarioError(
                f"{name}: latest deployment is {record['kind']}/{record['outcome']}"
            )
        offset = power_cycle_at(sc, name, requested[name]) - requested[name]
        out[name] = {
            p["phase"]: offset + p["seconds"] for p in record["phases"] if p["seconds"] is not None
        }
    return out


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2, help="rounds of N=1 then N=3")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and taps")
    missing = [t for t in ("dnsmasq", "qemu-system-x86_64") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install dnsmasq qemu-system-x86")
    print(f"bench_deploy: start, {loadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    image = build_guest_image()
    sc = Scenario(
        "bdep",
        args.rounds * sum(SIZES),
        work / "provisiond",
        subnet="10.217.0.0/24",
        ipv6_prefix="fd00:217::/64",
        log=lambda line: print(f"  {line}"),
    )
    chain = BareChain("bdep-bare", max(SIZES), work / "bare", image, ram_mib=sc.ram_mib)
    # Per N, one phase -> seconds dict per guest boot.
    bare: dict[int, list[dict[str, float]]] = {n: [] for n in SIZES}
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in SIZES}
    ok = False
    try:
        sc.up()
        chain.up()
        assert sc.rack is not None
        found = sc.discover()
        started = time.monotonic()
        sc.inspect_all(timeout=360)
        print(
            f"  discovered {found['responders']} BMCs; inspected {len(sc.rack.guests)} "
            f"machines in {time.monotonic() - started:.0f}s (not timed)"
        )
        names = iter(g.name for g in sc.rack.guests)
        key = public_key()
        plan = [
            (n, which)
            for r in range(args.rounds)
            for n in SIZES
            for which in (("bare", "provisiond") if r % 2 == 0 else ("provisiond", "bare"))
        ]
        for n, which in plan:
            if which == "bare":
                booted = list(chain.boot(chain.guests[:n]).values())
                bare[n].extend(booted)
                shown = sorted(p["os_callback"] for p in booted)
                what = "bare PXE -> callback"
            else:
                deployed = list(deploy(sc, [next(names) for _ in range(n)], key).values())
                runs[n].extend(deployed)
                shown = sorted(p["agent_heartbeat"] for p in deployed)
                what = "provisiond request -> active"
            seconds = " ".join(f"{s:.1f}" for s in shown)
            print(f"  N={n} {what} s: {seconds}  ({loadavg()})")
        ok = True
    except (ChainError, ScenarioError) as exc:
        print(f"bench_deploy failed: {exc}\n  logs kept in {work}")
        raise SystemExit(1) from None
    finally:
        chain.down()
        sc.down()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
    report(bare, runs)
    print(f"bench_deploy: end, {loadavg()}")


def report(
    bare: dict[int, list[dict[str, float]]], runs: dict[int, list[dict[str, float]]]
) -> None:
    chains = [(f"bare N={n}", bare[n]) for n in SIZES] + [(f"pvd N={n}", runs[n]) for n in SIZES]
    first: dict[str, float] = {}
    for _, boots in chains[len(SIZES) :]:
        for guest in boots:
            for phase, s in guest.items():
                first[phase] = min(s, first.get(phase, s))
    print(
        "\nper-phase medians, seconds since the deploy request (pvd: POST /allocations) or"
        "\nsince the QEMU start (bare: no request, no BMC; its server sees only HTTP phases):"
    )
    print(f"  {'phase':<18}" + "".join(f"{title:>11}" for title, _ in chains))
    for phase in sorted(first, key=first.__getitem__):
        cells = [med([p[phase] for p in boots if phase in p]) for _, boots in chains]
        print(f"  {phase:<18}" + "".join(f"{c:>11}" for c in cells))

    print("\nmedian / max seconds" + "".join(f"{f'N={n}':>17}" for n in SIZES))
    rows: dict[str, dict[int, list[float]]] = {
        "bare PXE -> callback": {},
        "request -> callback": {},
        "agent install": {},
        "request -> active": {},
        "active - agent install": {},
    }
    for n in SIZES:
        per = runs[n]
        rows["bare PXE -> callback"][n] = [p["os_callback"] for p in bare[n]]
        rows["request -> callback"][n] = [p["os_callback"] for p in per]
        rows["agent install"][n] = [p["agent_heartbeat"] - p["agent_install"] for p in per]
        rows["request -> active"][n] = [p["agent_heartbeat"] for p in per]
        # request -> active minus the agent install is request -> agent_install.
        rows["active - agent install"][n] = [p["agent_install"] for p in per]
    for title, by_n in rows.items():
        cells = []
        for n in SIZES:
            m, x = median_max(by_n[n])
            cells.append(f"{m:7.2f} / {x:6.2f}")
        print(f"  {title:<22}" + "".join(f"{c:>17}" for c in cells))
    verdicts = []
    for n in SIZES:
        bare_med = statistics.median(rows["bare PXE -> callback"][n])
        to_callback = statistics.median(rows["request -> callback"][n]) / bare_med - 1
        net = statistics.median(rows["active - agent install"][n]) / bare_med - 1
        verdicts.append(net * 100 <= TARGET_PCT)
        print(
            f"  N={n}: request -> callback {to_callback * 100:+.1f}% vs bare; "
            f"request -> active minus agent install {net * 100:+.1f}% vs bare"
        )
    met = "met" if all(verdicts) else "MISSED"
    print(
        "agent install = agent_install -> agent_heartbeat (SSH, upload, service start, first "
        f"heartbeat); target: active - agent install <= bare + {TARGET_PCT:.0f}%: {met}"
    )


if __name__ == "__main__":
    main()
