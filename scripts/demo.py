#!/usr/bin/env python3
"""`make demo`: three bare-metal machines to real Debian 12 instances, on a QEMU virtual rack.

It builds (or reuses) the deploy ramdisk and the Debian 12 disk image from Debian
packages, brings up a 3-machine rack (QEMU on TCG, each behind a simulated IPMI BMC on
127.0.0.1, 1 GiB RAM and a 3 GiB disk each) in its own network namespace, starts
`provisiond serve` on SQLite with the rack's provisioning network (dnsmasq runs inside
the namespace), then does the main job as an operator would: discover the BMCs,
inspect every machine, deploy the Debian image to all three disks at once through the
allocation API (ramdisk, image written and verified, boot from disk, cloud-init phones
home, agent installed), and print a table with each machine's address, per-phase
times and image write rate.
It keeps serving on 127.0.0.1:8080 until Ctrl-C; DEMO_ONESHOT=1 exits after the
table (0 when every machine is instance-ready). Everything is torn down on exit.

Environment: DEMO_PORT (8080), DEMO_DATA_DIR (.provisiond-demo), DEMO_RACK (demo),
DEMO_MACHINES (3).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provisiond.rack.scenario import Scenario, ScenarioError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DEMO_DATA_DIR", ROOT / ".provisiond-demo")).absolute()
PORT = int(os.environ.get("DEMO_PORT", "8080"))
RACK = os.environ.get("DEMO_RACK", "demo")
COUNT = int(os.environ.get("DEMO_MACHINES", "3"))
#: The columns of the summary: (title, phase the time is read at).
COLUMNS = (
    ("DHCP", "ipxe_dhcp"),
    ("ramdisk up", "ramdisk_callback"),
    ("image written", "image_written"),
    ("disk boot", "disk_boot"),
    ("OS callback", "os_callback"),
    ("ready", "agent_heartbeat"),
)
IMAGE = "debian-12"
console = Console(width=None if sys.stdout.isatty() else 150)
started = time.monotonic()


def step(message: str) -> None:
    console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {message}", highlight=False)


def ssh_key(path: Path) -> str:
    """The demo user's key pair (private half 0600), as `ssh -i` would use it."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode() + " demo@provisiond"


def summary(sc: Scenario, allocations: list[dict[str, Any]]) -> tuple[Table, bool]:
    table = Table(title="provisiond demo: instance ready", title_justify="left")
    for title in ("machine", "state", "address", *[c[0] for c in COLUMNS], "write", "host key"):
        table.add_column(title)
    ok = True
    for alloc in allocations:
        name = alloc["machine"] or "?"
        machine = sc.machine(name) if alloc["machine"] else {"state": "-"}
        record = sc.deployments(name)[0] if alloc["machine"] else {"phases": []}
        phases = {p["phase"]: p["seconds"] for p in record["phases"]}
        written = record.get("image_write") or {}
        rate = (
            f"{written['mb_s']:.0f} MB/s" if isinstance(written.get("mb_s"), int | float) else "-"
        )
        ok = ok and machine["state"] == "active" and alloc["state"] == "ready"
        table.add_row(
            name,
            machine["state"],
            alloc.get("address") or "-",
            *[f"{phases[p]:.1f}s" if phases.get(p) is not None else "-" for _, p in COLUMNS],
            rate,
            (alloc.get("host_key_fingerprint") or "-")[:19],
        )
    table.caption = "times are seconds after the BMC power-cycle; TCG (no KVM) on this machine"
    return table, ok


def physical_truth(sc: Scenario) -> Table:
    """Each machine's cabling verdict (LLDP against the plan) and the rack's measured
    draw against its budget, as `provisiond cabling check` and `racks power` show them."""
    with sc.api() as api:
        cabling = api.get("/cabling").json()
        power = api.get(f"/racks/{sc.name}/power").json()
    table = Table(title="physical truth: cabling and power", title_justify="left")
    for title in ("machine", "nic", "planned port", "LLDP saw", "cabling", "watts", "from"):
        table.add_column(title)
    draws = {m["name"]: m for m in power["machines"]}
    for port in cabling["ports"]:
        if not port["expected_port"]:
            continue
        draw = draws.get(port["machine"], {})
        cells = (
            port["machine"],
            port["nic"],
            f"{port['expected_switch']}/{port['expected_port']}",
            f"{port['seen_system_name'] or '-'}/{port['seen_port_id'] or '-'}",
            port["result"] + (f" ({port['reason']})" if port["reason"] else ""),
            str(draw.get("watts", "-")),
            str(draw.get("source", "-")),
        )
        table.add_row(*(Text(cell) for cell in cells))  # LLDP text is data, not markup
    budget = power["budget_watts"]
    table.caption = f"rack {power['rack']}: {power['measured_watts']} W measured of a " + (
        f"{budget} W budget ({power['budget_status']})" if budget else "budget not set"
    )
    return table


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    if DATA.exists():
        shutil.rmtree(DATA / "data", ignore_errors=True)
    DATA.mkdir(parents=True, exist_ok=True)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sc = Scenario(
        RACK,
        COUNT,
        DATA,
        api_port=PORT,
        log=step,
        ram_mib=1024,
        disk_mib=3072,
        disk_image=IMAGE,
        extra_config="power_sync_interval_s = 5\n",
    )
    try:
        step(
            f"building (or reusing) the ramdisk and the {IMAGE} disk image, "
            f"then a {COUNT}-machine rack"
        )
        sc.up()
        step(f"provisiond serve on {sc.url} (SQLite in {sc.data_dir}); images and inventory in")
        step(f"console: {sc.url}/ui/ (sign in with the token printed at the end; watch it live)")
        found = sc.discover()
        step(
            f"discover 127.0.0.1 BMCs over IPMI: {found['responders']} answered, "
            f"{len(found['updated'])} matched the inventory, {len(found['failed'])} failed"
        )
        inspected = sc.inspect_all(timeout=300)
        step(
            "inspected: "
            + ", ".join(
                f"{n} ({m['cpus']} CPU, {m['ram_mib']} MiB, "
                f"{sum(d['size_bytes'] for d in m['disks']) // 2**20} MiB disk)"
                for n, m in inspected.items()
            )
        )
        key_file = DATA / "demo_ed25519"
        names = sorted(inspected)
        ids = sc.allocate(names, [ssh_key(key_file)], image=IMAGE)
        step(f"allocated {len(ids)} machines; writing {IMAGE} to all three disks at once")
        allocations = sc.wait_allocations(ids, timeout=900)
        table, ok = summary(sc, allocations)
        console.print(table)
        console.print(physical_truth(sc))
        for alloc in allocations:
            if alloc["state"] == "failed":
                console.print(f"[red]{alloc['machine']}: {alloc['failure_reason']}[/]")
        console.print(
            f"\n  console:  {sc.url}/ui/  (sign in with the token below)\n"
            f"  API:      {sc.url}/api/v1  (docs {sc.url}/docs, metrics {sc.url}/metrics)\n"
            f"  token:    export PROVISIOND_URL={sc.url} PROVISIOND_TOKEN={sc.token}\n"
            f"  machines: {sys.executable} -m provisiond machines show vm1\n"
            f"  ssh:      ip netns exec pvd-{RACK} ssh -i {key_file} root@<address>\n"
            f"  logs:     {DATA / 'serve.log'}, {DATA / 'rack'}/vm*.serial.log",
            highlight=False,
        )
        step(f"daemon during the run: {sc.stall_report()}")
        if oneshot:
            return 0 if ok else 1
        console.print("Serving until Ctrl-C.")
        while not stop and sc.proc is not None and sc.proc.poll() is None:
            time.sleep(0.2)
        return 0 if stop else 1
    except (ScenarioError, httpx.HTTPError) as exc:
        console.print(f"[red]demo failed:[/] {exc!r}\n  see {DATA / 'serve.log'}", highlight=False)
        try:
            console.print(sc.diagnostics(), highlight=False, markup=False)
        except Exception as diag_exc:  # the failure above is what matters
            console.print(f"(no diagnostics: {diag_exc!r})", highlight=False, markup=False)
        return 1
    finally:
        sc.down()
        console.print("demo: stopped provisiond and removed the virtual rack")


if __name__ == "__main__":
    sys.exit(main())
