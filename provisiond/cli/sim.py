"""``provisiond sim``: simulators for the virtual rack (today: a farm of IPMI BMCs)."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Annotated

import typer

from provisiond.cli.common import console, fail
from provisiond.rack.bmc_sim import DEFAULT_LATENCY_MS, Farm, check_loopback, run_farm
from provisiond.rack.ipmi_bmc import DEFAULT_PASSWORD, DEFAULT_USERNAME
from provisiond.rack.ipmi_faults import (
    FAIL_SPEC_HELP,
    FaultRule,
    FaultSpecError,
    parse_fault,
    parse_load,
)
from provisiond.rack.ipmi_machine import PowerMeter

# Typer renders help as rich markup, where "[...]" would be read as a style tag.
_FAIL_HELP = FAIL_SPEC_HELP.replace("[", "\\[")

app = typer.Typer(help="Simulators for the virtual rack.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Simulators for the virtual rack."""  # keeps ``sim`` a group with one command


@app.command("bmc")
def sim_bmc(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many BMCs.")] = 1,
    address: Annotated[
        str, typer.Option("--address", help="Loopback address to listen on (127.0.0.0/8 only).")
    ] = "127.0.0.1",
    base_port: Annotated[
        int,
        typer.Option(
            "--base-port",
            min=0,
            max=65535,
            help="UDP port of BMC 0; BMC i listens on base+i. 0 picks a free range.",
        ),
    ] = 16000,
    username: Annotated[str, typer.Option("--username", help="IPMI user name.")] = DEFAULT_USERNAME,
    password: Annotated[str, typer.Option("--password", help="IPMI password.")] = DEFAULT_PASSWORD,
    latency_ms: Annotated[
        float,
        typer.Option("--latency-ms", min=0, help="Delay before every reply, in milliseconds."),
    ] = DEFAULT_LATENCY_MS,
    fail_specs: Annotated[
        list[str] | None, typer.Option("--fail", metavar="SPEC", help=_FAIL_HELP)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the drop fault's dice.")] = 0,
    idle_watts: Annotated[
        int, typer.Option("--idle-watts", min=0, max=65535, help="Draw of an idle machine (W).")
    ] = 120,
    load_watts: Annotated[
        int, typer.Option("--load-watts", min=0, max=65535, help="Draw at full load (W).")
    ] = 350,
    load_specs: Annotated[
        list[str] | None,
        typer.Option(
            "--load",
            metavar="FRACTION[@TARGETS]",
            help="Load 0-1 of those machines (default every one), for DCMI power readings; "
            "repeatable, later specs win. Off machines draw 0 W.",
        ),
    ] = None,
) -> None:
    """Serve simulated IPMI 2.0 BMCs (RMCP+, cipher suite 3) until SIGTERM or Ctrl-C.

    Each BMC has power, boot flags and a FRU identity, and answers ipmitool
    (-I lanplus) and pyghmi. Prints one line per listening range, e.g.

      provisiond sim bmc --count 1000 --base-port 16000 --fail drop=0.1@0-9
    """
    try:
        check_loopback(address)
        rules: list[FaultRule] = [parse_fault(spec) for spec in fail_specs or ()]
        loads = [parse_load(spec) for spec in load_specs or ()]
    except FaultSpecError as exc:
        fail(f"--fail/--load: {exc}", hint="e.g. --fail drop=0.2@0-9 --load 0.5@0-9")
    except ValueError as exc:
        fail(str(exc), hint="e.g. --address 127.0.0.1 (or any 127.x.y.z)")
    if base_port and base_port + count - 1 > 65535:
        fail(f"ports {base_port}-{base_port + count - 1} go past 65535", hint="lower --base-port")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()

    def ready(farm: Farm, _loop: object) -> None:
        for index, bmc in enumerate(farm.bmcs):
            load = [fraction for fraction, targets in loads if targets is None or index in targets]
            bmc.meter = PowerMeter(idle_watts, load_watts, load[-1] if load else 0.0)
        took = time.monotonic() - started
        faults = f", faults: {' '.join(fail_specs)}" if fail_specs else ""
        console.print(
            f"listening on {farm.address}:{farm.base_port}-{farm.last_port}/udp: "
            f"{len(farm.bmcs)} BMCs, user {username}, latency {latency_ms:g} ms"
            f"{faults} (ready in {took:.2f} s)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    try:
        run_farm(
            count,
            address,
            base_port,
            username,
            password,
            latency_ms,
            rules,
            stop,
            seed=seed,
            on_ready=ready,
        )
    except OSError as exc:
        fail(str(exc), hint="pick another --base-port, or --base-port 0 for a free range")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopped", highlight=False)


@app.command("pdu")
def sim_pdu(
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, max=1000, help="How many PDUs.")
    ] = 1,
    outlets: Annotated[int, typer.Option("--outlets", min=1, max=96, help="Outlets per PDU.")] = 24,
    address: Annotated[
        str, typer.Option("--address", help="Loopback address to listen on (127.0.0.0/8 only).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, help="UDP port of PDU 0; PDU i on port+i; 0: free range."
        ),
    ] = 16161,
    community: Annotated[str, typer.Option("--community", help="SNMPv2c community.")] = "private",
) -> None:
    """Serve simulated APC rack PDUs (SNMP, PowerNet-MIB outlets) until SIGTERM or Ctrl-C.

    Standalone, the outlets feed nothing (0 W); ``provisiond rack up`` runs PDUs wired
    to its machines instead. SNMPv3 users are for tests (provisiond.rack.pdu_sim).
    """
    from provisiond.rack.pdu_sim import SnmpAgent, serve_pdus

    try:
        check_loopback(address)
    except ValueError as exc:
        fail(str(exc), hint="e.g. --address 127.0.0.1 (or any 127.x.y.z)")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def ready(agent: SnmpAgent) -> None:
        first, last = agent.pdus[0].port, agent.pdus[-1].port
        console.print(
            f"{len(agent.pdus)} PDU(s) x {outlets} outlets listening on "
            f"{agent.address}:{first}-{last}/udp",
            highlight=False,
        )

    args = {"count": count, "outlets": outlets, "address": address, "base_port": port}
    try:
        serve_pdus({**args, "community": community}, stop, on_ready=ready)
    except OSError as exc:
        fail(str(exc), hint="pick another --port, or --port 0 for a free range")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopped", highlight=False)
