"""``provisiond rack up|down|status``: the virtual rack of QEMU guests behind simulated BMCs.

Thin: :mod:`provisiond.rack.vrack` does the work. Needs root (namespaces, taps);
talks to no daemon. ``up`` prints the machines and the two files to hand to the
daemon: ``inventory.yaml`` (``provisiond inventory apply``) and ``network.toml``
(a ``[[networks]]`` entry of its config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from provisiond.cli.common import JsonFlag, console, emit, err_console, handled
from provisiond.rack import vrack
from provisiond.rack.vrack_files import (
    DEFAULT_POWER_BUDGET_W,
    PDU_COMMUNITY_FILE,
    pdu_name,
    switch_chassis_mac,
    switch_name,
)

app = typer.Typer(help="The virtual rack: QEMU guests behind simulated IPMI BMCs.")

NameOpt = Annotated[str, typer.Option("--name", help="Rack name; its namespace is pvd-NAME.")]
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State folder (default $PROVISIOND_RACK_DIR/NAME or /var/lib/provisiond/rack/NAME).",
    ),
]


@app.command("up")
def rack_up(
    count: Annotated[int, typer.Argument(min=1, max=vrack.MAX_GUESTS, help="How many guests.")],
    name: NameOpt = "vrack",
    state_dir: DirOpt = None,
    ram: Annotated[int, typer.Option("--ram", min=64, help="Guest RAM in MiB.")] = 384,
    disk: Annotated[int, typer.Option("--disk", min=4, help="Guest disk in MiB.")] = 64,
    http_port: Annotated[
        int, typer.Option("--http-port", min=1, max=65535, help="Daemon's boot HTTP port.")
    ] = 8080,
    uefi: Annotated[
        int, typer.Option("--uefi", min=0, help="How many guests (the last ones) boot UEFI.")
    ] = 0,
    two_nics: Annotated[
        int,
        typer.Option(
            "--two-nics",
            min=0,
            help="How many guests (the first ones) have an uncabled first NIC and boot from "
            "their second.",
        ),
    ] = 0,
    swap_cables: Annotated[
        str | None,
        typer.Option(
            "--swap-cables",
            metavar="VMA,VMB",
            help="A cabling fault: the switch announces each of these two guests' planned "
            "port (LLDP) to the other, e.g. vm1,vm2.",
        ),
    ] = None,
    pdu_miswire: Annotated[
        str | None,
        typer.Option(
            "--pdu-miswire",
            metavar="VMA,VMB",
            help="An inventory fault: inventory.yaml puts each of these two guests on the "
            "other's PDU outlet (the PDU's real wiring stays right), e.g. vm1,vm2.",
        ),
    ] = None,
    power_budget: Annotated[
        int,
        typer.Option("--power-budget", min=0, help="The rack's power budget in watts."),
    ] = DEFAULT_POWER_BUDGET_W,
) -> None:
    """Create the namespace, bridge, taps, disks and BMCs; the guests stay off.

    provisiond rack up 3 && provisiond inventory apply /var/lib/provisiond/rack/vrack/inventory.yaml
    """
    with handled():
        rack = vrack.up(
            count,
            name=name,
            state_dir=state_dir,
            ram_mib=ram,
            disk_mib=disk,
            http_port=http_port,
            uefi=uefi,
            two_nics=two_nics,
            swap_cables=swap_cables.split(",") if swap_cables else None,
            pdu_miswire=pdu_miswire.split(",") if pdu_miswire else None,
            power_budget_watts=power_budget,
        )
    emit(
        [
            {
                "machine": g.name,
                "MAC": g.mac,
                "IP": g.ip,
                "BMC": f"{g.bmc_address}:{g.bmc_port}",
                "firmware": g.firmware,
                "switch port": g.switch_port,
                "uncabled NIC": g.unwired_mac or "-",
            }
            for g in rack.guests
        ],
        False,
        columns=("machine", "MAC", "IP", "BMC", "firmware", "switch port")
        + (("uncabled NIC",) if two_nics else ()),
        title=f"rack {rack.name}: namespace {rack.netns}, {rack.bridge} {rack.boot_address}",
    )
    switch = f"switch:    {switch_name(rack.name)} ({switch_chassis_mac(rack.name)}), LLDP"
    if rack.swap_cables:
        switch += f" with the cables of {' and '.join(rack.swap_cables)} swapped"
    console.print(switch, highlight=False)
    pdu = f"PDU:       {pdu_name(rack.name)} on 127.0.0.1:{rack.pdu_port} (SNMP v2c, apc_snmp)"
    if rack.pdu_miswire:
        pdu += f"; the inventory swaps the outlets of {' and '.join(rack.pdu_miswire)}"
    console.print(pdu, highlight=False)
    console.print(f"budget:    {rack.power_budget_watts} W", highlight=False)
    console.print(f"inventory: {rack.inventory_file}", highlight=False)
    console.print(f"network:   {rack.network_file}", highlight=False)
    if os.environ.get(vrack.PASSWORD_ENV):
        console.print(f"BMC user {rack.bmc_username}, password from ${vrack.PASSWORD_ENV}")
    else:
        console.print(
            f"BMC user {rack.bmc_username}; before 'provisiond inventory apply': "
            f"export {vrack.PASSWORD_ENV}=password",
            highlight=False,
        )
    community = Path(rack.state_dir) / PDU_COMMUNITY_FILE
    if os.environ.get(vrack.PDU_COMMUNITY_ENV):
        console.print(f"PDU community from ${vrack.PDU_COMMUNITY_ENV}", highlight=False)
    else:
        console.print(
            f"PDU community: export {vrack.PDU_COMMUNITY_ENV}=$(cat {community})", highlight=False
        )


@app.command("down")
def rack_down(name: NameOpt = "vrack", state_dir: DirOpt = None) -> None:
    """Stop the BMCs and guests; remove the namespace and the rack's files (also after a crash)."""
    with handled():
        removed = vrack.down(name, state_dir)
    for line in removed:
        console.print(f"removed {line}", highlight=False)
    if not removed:
        console.print(f"nothing to remove: no rack {name!r}", highlight=False)


@app.command("status")
def rack_status(
    name: NameOpt = "vrack", state_dir: DirOpt = None, as_json: JsonFlag = False
) -> None:
    """Each guest's power (from its QEMU PID), BMC port and last serial line."""
    with handled():
        state = vrack.status(name, state_dir)
    if as_json:
        emit(state.to_dict(), True)
        return
    farm = "running" if state.farm_running else "NOT running (run 'provisiond rack down')"
    emit(
        [
            {"machine": g.name, "power": g.power, "BMC port": g.bmc_port,
             "serial": g.last_serial_line[-60:]}
            for g in state.guests
        ],
        False,
        columns=("machine", "power", "BMC port", "serial"),
        title=f"rack {name}: BMC farm {farm}",
    )  # fmt: skip


disk_image_app = typer.Typer(help="The Debian 12 disk image for real instances.")
app.add_typer(disk_image_app, name="disk-image")


@disk_image_app.command("build")
def disk_image_build(
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Cache folder (default: the guest image's).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build (or reuse from the cache) debian-12.raw, its .gz and manifest.json; needs root."""
    from provisiond.rack.disk_image import build_disk_image

    with handled():
        image = build_disk_image(cache, force=force, log=lambda m: err_console.print(m))
    info = image.info()
    summary = {
        "raw": str(image.raw), "gz": str(image.gz), "manifest": str(image.manifest),
        "recipe_hash": image.recipe_hash, "built": image.built,
        "raw_allocated": info["raw_allocated"], "gz_size": info["gz_size"],
    }  # fmt: skip
    emit(summary if as_json else [summary], as_json, columns=("raw", "gz", "recipe_hash", "built"))
