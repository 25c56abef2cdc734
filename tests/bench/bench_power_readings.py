"""Benchmark: power readings of 1,000 BMCs and 50 PDUs (48 outlets each) in one power sync.

A ``provisiond sim bmc`` child serves 1,000 BMCs at 2 ms latency on loopback (DCMI
Get Power Reading; half the machines on, at 120-350 W). A second child serves 50
simulated APC PDUs (SNMPv2c, :mod:`provisiond.rack.pdu_sim`) with 48 metered
outlets each. A SQLite provisiond DB holds the 1,000 machines in 25 racks with
budgets, and the 50 PDUs with their 2,400 outlets, 1,000 of them feeding machines.

The real power sync (``provisiond.machines.power_sync.sync_power``: power state then
draw per BMC on one session, the PDU poll alongside, one write, the rack sums)
runs cold once, then warm five times; then the PDU poll alone, three times. The
baselines, in the same run, fetch the same data with the usual tools through
``xargs -P16``: ``ipmitool -I lanplus -C 3 dcmi power reading`` per BMC (which also
logs in per BMC), and one ``snmpget -v2c`` per PDU asking the same objects the PDU
driver reads (the total and each outlet's state and watts). Bounded: six syncs,
three PDU polls and one pass of each tool.

    .venv/bin/python tests/bench/bench_power_readings.py [--count 1000] [--pdus 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchlib import PHASE_DEADLINE_S, READY, ROOT, cpu_seconds, start_simulator, stop

from provisiond import lifecycle
from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.drivers.pdu.apc_snmp import DEVICE_WATTS, OUTLET_COMMAND, OUTLET_WATTS
from provisiond.executor import BlockingExecutor
from provisiond.lifecycle import Ev
from provisiond.machines.power_sync import sync_power
from provisiond.models import Bmc, CredentialSet, Machine, Outlet, Pdu, Rack
from provisiond.pdus.poll import poll_pdus
from provisiond.secrets import SecretBox

WARM_RUNS = 5
TARGET_RATIO = 10.0
TARGET_S = 3.0
OUTLETS = 48
MACHINES_PER_RACK = 40
COMMUNITY = "private"

#: The PDU child: SnmpAgent on its own loop, every outlet feeding a running machine.
_PDU_CHILD = """
import asyncio, signal, sys
from provisiond.rack.ipmi_machine import InMemoryMachine
from provisiond.rack.pdu_sim import SnmpAgent

async def main():
    agent = SnmpAgent.start(int(sys.argv[1]), int(sys.argv[2]), base_port=0)
    for pdu in agent.pdus:
        for outlet in pdu.outlets.values():
            outlet.machine = InMemoryMachine(on=True)
    ports = [pdu.port for pdu in agent.pdus]
    print(f"listening on {agent.address}:{ports[0]}-{ports[-1]}/udp", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    agent.close()

asyncio.run(main())
"""


def start_pdus(count: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _PDU_CHILD, str(count), str(OUTLETS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = READY.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"PDU simulator did not start: {line!r}")
    return proc, int(match["first"])


def build(data: Path, bmc_ports: list[int], pdu_ports: list[int]) -> Services:
    settings = load_settings(None, data_dir=data, power_sync_concurrency=64)
    db = Database(settings.db_url)
    db.upgrade()
    box = SecretBox.from_key_file(settings.key_file)
    services = Services(settings, db, box, executor=BlockingExecutor(64))
    with db.transaction() as session:
        cred = CredentialSet(name="sim", username="admin", secret_encrypted=box.encrypt("password"))
        session.add(cred)
        racks = [
            Rack(name=f"r{i:02d}", power_budget_watts=8000)
            for i in range(len(bmc_ports) // MACHINES_PER_RACK + 1)
        ]
        session.add_all(racks)
        session.flush()
        machine_ids = []
        for index, port in enumerate(bmc_ports):
            rack = racks[index // MACHINES_PER_RACK]
            machine = Machine(name=f"m{index:04d}", rack_id=rack.id, power_watts=350)
            lifecycle.advance(session, machine, Ev.ENROLL, actor="bench")
            assert machine.id is not None
            machine_ids.append(machine.id)
            session.add(
                Bmc(
                    machine_id=machine.id, address="127.0.0.1", port=port, credential_set_id=cred.id
                )
            )
        secret = box.encrypt(json.dumps({"community": COMMUNITY}))
        fed = iter(machine_ids)
        for index, port in enumerate(pdu_ports):
            pdu = Pdu(
                name=f"pdu{index:02d}", rack_id=racks[index // 2 % len(racks)].id,
                driver="apc_snmp", mgmt_address="127.0.0.1", snmp_port=port,
                secret_encrypted=secret,
            )  # fmt: skip
            session.add(pdu)
            session.flush()
            assert pdu.id is not None
            for number in range(1, OUTLETS + 1):
                # 20 outlets of each PDU feed machines (1,000 of 2,400); the rest are spare.
                machine_id = next(fed, None) if number <= 20 else None
                session.add(Outlet(pdu_id=pdu.id, number=number, machine_id=machine_id))
    return services


def bench_ipmitool_dcmi(ports: list[int]) -> tuple[float, float, int]:
    ipmitool = shutil.which("ipmitool") or "/usr/bin/ipmitool"
    cpu0, wall0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
    result = subprocess.run(
        ["xargs", "-P16", "-I{}", ipmitool, "-I", "lanplus", "-C", "3", "-H", "127.0.0.1",
         "-p", "{}", "-U", "admin", "-P", "password", "-N", "1", "-R", "2",
         "dcmi", "power", "reading"],
        input="\n".join(map(str, ports)) + "\n", capture_output=True, text=True,
        timeout=PHASE_DEADLINE_S, check=False,
    )  # fmt: skip
    wall = time.monotonic() - wall0
    ok = result.stdout.count("Instantaneous power reading")
    return wall, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0, ok


def bench_snmpget(ports: list[int]) -> tuple[float, float, int]:
    snmpget = shutil.which("snmpget")
    if snmpget is None:
        raise SystemExit("snmpget is missing: apt-get install -y snmp")
    oids = [DEVICE_WATTS]
    for n in range(1, OUTLETS + 1):
        oids += [f"{OUTLET_COMMAND}.{n}", f"{OUTLET_WATTS}.{n}"]
    cpu0, wall0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
    result = subprocess.run(
        ["xargs", "-P16", "-I{}", snmpget, "-v2c", "-c", COMMUNITY, "-On", "-t", "3", "-r", "1",
         "127.0.0.1:{}", *oids],
        input="\n".join(map(str, ports)) + "\n", capture_output=True, text=True,
        timeout=PHASE_DEADLINE_S, check=False,
    )  # fmt: skip
    wall = time.monotonic() - wall0
    ok = result.stdout.count(f".{DEVICE_WATTS} = ")
    return wall, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0, ok


def bench_pdu_poll(services: Services, count: int) -> None:
    """The PDU part alone: ``poll_pdus`` (read every PDU, store), three times."""
    walls, cpus = [], []
    for _ in range(3):
        cpu0, wall0 = cpu_seconds(resource.RUSAGE_SELF), time.monotonic()
        polls = asyncio.run(poll_pdus(services))
        walls.append(time.monotonic() - wall0)
        cpus.append(cpu_seconds(resource.RUSAGE_SELF) - cpu0)
    read = sum(1 for p in polls if p.reading is not None)
    print(
        f"provisiond PDU poll alone: {read}/{count} PDUs read, {statistics.median(walls):.2f} s "
        f"wall, {statistics.median(cpus):.2f} s client CPU (median of 3)"
    )


def _verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--pdus", type=int, default=50)
    args = parser.parse_args()
    bmc_proc, first, _ = start_simulator(args.count, 2.0)
    pdu_proc, pdu_first = start_pdus(args.pdus)
    bmc_ports = list(range(first, first + args.count))
    pdu_ports = list(range(pdu_first, pdu_first + args.pdus))
    try:
        # Half the machines on, so readings are not all 0 W (ipmitool: chassis power on).
        subprocess.run(
            ["xargs", "-P16", "-I{}", "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1",
             "-p", "{}", "-U", "admin", "-P", "password", "chassis", "power", "on"],
            input="\n".join(map(str, bmc_ports[::2])) + "\n", capture_output=True,
            text=True, timeout=PHASE_DEADLINE_S, check=False,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            services = build(Path(tmp), bmc_ports, pdu_ports)
            warm: list[float] = []
            short = 0
            for run in range(1 + WARM_RUNS):
                label = "cold (login + read)" if run == 0 else f"warm {run}/{WARM_RUNS}"
                cpu0 = cpu_seconds(resource.RUSAGE_SELF)
                report = asyncio.run(sync_power(services))
                cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu0
                over = sum(1 for rack in report.racks if rack.budget_status == "over_100")
                pdu_fed = sum(rack.counted.get("pdu", 0) for rack in report.racks)
                if run:
                    warm.append(report.seconds)
                    short += len(report.failed) + (args.count - report.watts_read)
                print(
                    f"provisiond power sync, {label}: {report.read - len(report.failed)}/"
                    f"{args.count} states, {report.watts_read} BMC readings, {pdu_fed} machines "
                    f"on PDU readings, {len(report.racks)} racks ({over} over budget); "
                    f"{report.seconds:.2f} s wall, {cpu:.2f} s client CPU"
                )
            bench_pdu_poll(services, args.pdus)
            services.close()
        wall_i, cpu_i, ok_i = bench_ipmitool_dcmi(bmc_ports)
        print(
            f"baseline ipmitool -I lanplus dcmi power reading, xargs -P16: {ok_i}/{args.count} "
            f"ok, {wall_i:.2f} s wall, {cpu_i:.2f} s CPU"
        )
        wall_s, cpu_s, ok_s = bench_snmpget(pdu_ports)
        print(
            f"baseline snmpget -v2c ({1 + 2 * OUTLETS} objects per PDU), xargs -P16: "
            f"{ok_s}/{args.pdus} ok, {wall_s:.2f} s wall, {cpu_s:.2f} s CPU"
        )
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"(load average {load} on {os.cpu_count()} CPUs)")
        median = statistics.median(warm)
        baseline = wall_i + wall_s
        ratio = baseline / median
        head = (
            f"power readings, {args.count} BMCs + {args.pdus} PDUs x {OUTLETS} outlets, warm: "
            f"{median:.2f} s (median of {WARM_RUNS})"
        )
        if short:  # a fast sync that missed readings meets nothing
            head += f", {short} reads FAILED or missing"
        print(
            f"{head}; baselines {wall_i:.2f} s + {wall_s:.2f} s = {baseline:.2f} s, ratio "
            f"{ratio:.1f}x (target >= {TARGET_RATIO:g}x) "
            f"{_verdict(ratio >= TARGET_RATIO and not short)}"
        )
        print(f"{head} (target <= {TARGET_S:g} s) {_verdict(median <= TARGET_S and not short)}")
    finally:
        stop(pdu_proc)
        stop(bmc_proc)


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"(benchmark took {time.monotonic() - started:.0f} s)")
