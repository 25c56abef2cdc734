"""The virtual rack: N QEMU guests on a bridge in their own namespace, each behind a BMC.

``up(2, name="vrack")`` builds, and ``down("vrack")`` removes:

- network namespace ``pvd-<name>`` with ``lo`` up and bridge ``br0`` holding the
  boot address (``.1`` of the subnet) and ``fd00:213::1/64`` with DAD off, so both
  are usable at once; taps ``tap1..tapN`` on the bridge. The daemon runs dnsmasq
  and its boot HTTP listener inside the namespace (``network.toml`` says how); the
  rack itself answers nothing on the bridge (:mod:`provisiond.rack.vrack_net`);
- per guest K: ``vmK``, MAC ``52:54:00:HH:HH:KK`` (HH:HH from the rack name, so two
  racks in one database do not collide), fixed address ``.(10+K)``, a raw disk
  ``vmK.disk`` whose first and last MiB are 0xA5 (a wipe is visible), serial log
  ``vmK.serial.log`` and pidfile ``vmK.pid``; a two-NIC guest (``two_nics``) also has an
  uncabled first NIC, MAC ``..:HH:HH:(80+K)``, and boots from its second (the bridge's);
- one detached BMC farm process (``python -m provisiond.rack.vrack serve-bmcs``):
  an IPMI BMC per guest on 127.0.0.1, whose power commands start and kill the
  guest's QEMU (:mod:`provisiond.rack.qemu`). Guests are off after ``up``; power
  goes only through the BMCs. On SIGTERM the farm kills its QEMUs and exits. The farm
  also runs the rack's switch, an LLDP speaker on the taps (:mod:`.lldp_switch`), and
  its PDU, an SNMP agent on 127.0.0.1 whose outlet K feeds guest K (:mod:`.rack_farm`);
- in the state folder (:mod:`provisiond.rack.vrack_files`): ``rack.json``
  (:class:`RackState`), ``inventory.yaml`` for ``provisiond inventory apply`` (BMC
  password from ``$PROVISIOND_RACK_BMC_PASSWORD``, PDU community from
  ``$PROVISIOND_RACK_PDU_COMMUNITY``, kept in ``pdu.community``) and ``network.toml``, a
  ``[[networks]]`` entry of the daemon's config (:class:`ProvisioningNetwork`).

``down`` works from whatever is left after a crash: a missing or partial state
file, a dead farm, QEMUs named by pidfiles, a stale namespace. It signals only
PIDs the rack recorded whose command line still names qemu or provisiond, so a
recycled PID is left alone. Every wait is bounded.

This module is the lifecycle (``up``, ``down``, ``load``, ``status``, the farm's
entry point); the state and its files are :mod:`provisiond.rack.vrack_files`, whose
names other code reads from here (``RackState``, ``network_toml``, ...) are re-exported.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisiond.errors import BadRequest, Conflict, NotFound, ProvisiondError
from provisiond.rack import lldp_switch
from provisiond.rack.ipmi_bmc import DEFAULT_PASSWORD, DEFAULT_USERNAME
from provisiond.rack.qemu import (
    OVMF_VARS,
    QEMU,
    QemuBackend,
    accel_from_env,
    kill_recorded,
    pid_alive,
    pid_command,
    serve_farm,
)
from provisiond.rack.vrack_args import (
    MAX_GUESTS,
    NAME,
    check_args,
    check_budget,
    check_firmware_and_nics,
    check_miswire,
)
from provisiond.rack.vrack_files import (
    DEFAULT_POWER_BUDGET_W,
    FARM_LOG,
    FILL,
    GUEST_FILES,
    INVENTORY_FILE,
    NETWORK_FILE,
    PASSWORD_ENV,
    PDU_COMMUNITY_ENV,
    PDU_COMMUNITY_FILE,
    READY_FILE,
    STATE_FILE,
    GuestState,
    RackState,
    guest_mac,
    inventory_yaml,
    last_line,
    make_disk,
    network_toml,
    pdu_name,
    read_json,
    write_atomic,
)
from provisiond.rack.vrack_net import BRIDGE, build_network, delete_netns, netns_exists, netns_pids

__all__ = [  # includes names re-exported from vrack_files
    "DEFAULT_POWER_BUDGET_W",
    "FILL",
    "INVENTORY_FILE",
    "MAX_GUESTS",
    "NETWORK_FILE",
    "PASSWORD_ENV",
    "PDU_COMMUNITY_ENV",
    "GuestState",
    "GuestStatus",
    "RackState",
    "RackStatus",
    "default_state_dir",
    "down",
    "inventory_yaml",
    "network_toml",
    "status",
    "up",
]

_FARM_READY_S, _FARM_STOP_S = 30.0, 10.0


@dataclass
class GuestStatus:
    name: str
    power: str  # on | off
    pid: int | None
    bmc_port: int
    last_serial_line: str


@dataclass
class RackStatus:
    rack: RackState
    farm_running: bool
    guests: list[GuestStatus]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rack": self.rack.to_dict(),
            "farm_running": self.farm_running,
            "guests": [asdict(g) for g in self.guests],
        }


def default_state_dir(name: str) -> Path:
    """``$PROVISIOND_RACK_DIR/<name>``, by default ``/var/lib/provisiond/rack/<name>``."""
    return Path(os.environ.get("PROVISIOND_RACK_DIR") or "/var/lib/provisiond/rack") / name


def _args(name: str, state_dir: Path) -> str:
    """The CLI options that name this rack, for hints."""
    custom = state_dir != default_state_dir(name).absolute()
    return f"--name {name}" + (f" --state-dir {state_dir}" if custom else "")


# -- helpers -------------------------------------------------------------------------


def _farm_running(data: dict[str, Any], state_dir: Path) -> int | None:
    pid = data.get("farm_pid") or read_json(state_dir / READY_FILE).get("pid")
    if isinstance(pid, int) and pid_alive(pid) and "provisiond" in pid_command(pid):
        return pid
    return None


# -- up ------------------------------------------------------------------------------


def up(
    count: int,
    *,
    name: str = "vrack",
    state_dir: Path | None = None,
    subnet: str = "10.213.0.0/24",
    ipv6_prefix: str = "fd00:213::/64",
    ram_mib: int = 384,
    cpus: int = 1,
    disk_mib: int = 64,
    http_port: int = 8080,
    bmc_base_port: int = 0,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    uefi: int = 0,
    two_nics: int = 0,
    swap_cables: Sequence[str] | None = None,
    pdu_community: str | None = None,
    pdu_miswire: Sequence[str] | None = None,
    power_budget_watts: int = DEFAULT_POWER_BUDGET_W,
) -> RackState:
    """Build the rack and start its BMC farm; the guests stay off. See the module doc.

    ``password`` defaults to ``$PROVISIOND_RACK_BMC_PASSWORD``, else ``password``.
    The last ``uefi`` guests boot OVMF (UEFI) instead of SeaBIOS; the first
    ``two_nics`` guests have an uncabled first NIC and boot from their second. The
    switch announces the ``swap_cables`` guests' ports crossed (:mod:`.lldp_switch`).
    The PDU's community is ``pdu_community``, else ``$PROVISIOND_RACK_PDU_COMMUNITY``,
    else random; the inventory swaps the ``pdu_miswire`` guests' outlets.
    """
    check_args(name, count, ram_mib, cpus, disk_mib)
    check_firmware_and_nics(count, uefi, two_nics)
    swap = lldp_switch.check_swap(swap_cables, count)
    miswire = check_miswire(pdu_miswire, count)
    check_budget(power_budget_watts)
    net = ipaddress.IPv4Network(subnet)
    v6 = ipaddress.IPv6Network(ipv6_prefix)
    if net.prefixlen > 24 or v6.prefixlen != 64:
        raise BadRequest(
            f"subnet {subnet} / {ipv6_prefix}", hint="use an IPv4 /24 (or larger) and an IPv6 /64"
        )
    accel = accel_from_env()
    state_dir = Path(state_dir or default_state_dir(name)).absolute()
    netns = f"pvd-{name}"
    existing = read_json(state_dir / STATE_FILE)
    if pid := _farm_running(existing, state_dir):
        raise Conflict(
            f"rack {name!r} is already up (BMC farm pid {pid}, state in {state_dir})",
            hint=f"'provisiond rack down {_args(name, state_dir)}' first, or another --name",
        )
    if existing or (state_dir / READY_FILE).exists():
        down(name, state_dir)  # stale: its farm is gone
    elif netns_exists(netns):
        raise Conflict(
            f"network namespace {netns} exists, but {state_dir} holds no rack state",
            hint=f"'provisiond rack down --name {name} --state-dir DIR' with the rack's own folder "
            f"(or 'ip netns del {netns}' if it is a leftover)",
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    base = net.network_address
    rack = RackState(
        name=name,
        state_dir=str(state_dir),
        netns=netns,
        bridge=BRIDGE,
        subnet=str(net),
        boot_address=str(base + 1),
        ipv6_prefix=str(v6),
        ipv6_address=str(v6.network_address + 1),
        http_port=http_port,
        accel=accel,
        bmc_username=username,
        swap_cables=swap,
        pdu_miswire=miswire,
        power_budget_watts=power_budget_watts,
    )
    for k in range(1, count + 1):
        rack.guests.append(
            GuestState(
                index=k,
                name=f"vm{k}",
                mac=guest_mac(name, k),
                ip=str(base + 10 + k),
                tap=f"tap{k}",
                disk=str(state_dir / f"vm{k}.disk"),
                serial_log=str(state_dir / f"vm{k}.serial.log"),
                pidfile=str(state_dir / f"vm{k}.pid"),
                bmc_address="127.0.0.1",
                bmc_port=0,
                ram_mib=ram_mib,
                cpus=cpus,
                disk_mib=disk_mib,
                firmware="uefi" if k > count - uefi else "bios",
                unwired_mac=guest_mac(name, 0x80 + k) if k <= two_nics else "",
            )
        )
    password = password or os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD
    community = pdu_community or os.environ.get(PDU_COMMUNITY_ENV) or secrets.token_urlsafe(16)
    try:
        build_network(rack)
        for guest in rack.guests:
            make_disk(Path(guest.disk), guest.disk_mib)
            if guest.firmware == "uefi":
                shutil.copyfile(OVMF_VARS, guest.qemu_guest().vars_file)
        write_atomic(state_dir / STATE_FILE, json.dumps(rack.to_dict(), indent=2))
        write_atomic(state_dir / PDU_COMMUNITY_FILE, community + "\n", mode=0o600)
        secret_env = {PASSWORD_ENV: password, PDU_COMMUNITY_ENV: community}
        rack.farm_pid, base_port, rack.pdu_port = _start_farm(state_dir, bmc_base_port, secret_env)
        for guest in rack.guests:
            guest.bmc_port = base_port + guest.index - 1
        write_atomic(state_dir / STATE_FILE, json.dumps(rack.to_dict(), indent=2))
        write_atomic(rack.inventory_file, inventory_yaml(rack))
        write_atomic(rack.network_file, network_toml(rack))
    except BaseException:
        down(name, state_dir)
        raise
    return rack


def _start_farm(state_dir: Path, base_port: int, env: dict[str, str]) -> tuple[int, int, int]:
    """Spawn the detached farm with the secrets in ``env``; wait (bounded) for its ready
    file: (pid, BMC base port, PDU port)."""
    (state_dir / READY_FILE).unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "provisiond.rack.vrack",
        "serve-bmcs",
        "--state",
        str(state_dir / STATE_FILE),
        "--base-port",
        str(base_port),
    ]
    log = str(state_dir / FARM_LOG)
    # posix_spawn, not Popen: the farm outlives this process, and a Popen object
    # dropped while its child runs warns; ``down`` reaps it when it is our child.
    pid = os.posix_spawn(
        sys.executable,
        cmd,
        {**os.environ, **env},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    deadline = time.monotonic() + _FARM_READY_S
    while time.monotonic() < deadline:
        ready = read_json(state_dir / READY_FILE)
        ports = ready.get("base_port"), ready.get("pdu_port")
        if ready.get("pid") == pid and all(isinstance(port, int) for port in ports):
            return pid, ready["base_port"], ready["pdu_port"]
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    kill_recorded(pid, "provisiond", signal.SIGKILL, wait_s=3)
    tail = (state_dir / FARM_LOG).read_text(errors="replace").strip().splitlines()[-3:]
    raise ProvisiondError(
        f"the BMC farm did not start: {' / '.join(tail) or 'no output'}",
        hint=f"see {state_dir / FARM_LOG}; with --bmc-port, pick a free port or 0",
        code="rack_failed",
    )


# -- down and status -----------------------------------------------------------------


def down(name: str = "vrack", state_dir: Path | None = None) -> list[str]:
    """Stop and remove the rack, or whatever a crash left of it; what was removed."""
    if not NAME.match(name):
        raise BadRequest(f"rack name {name!r} is not valid", hint="e.g. --name vrack")
    state_dir = Path(state_dir or default_state_dir(name)).absolute()
    data = read_json(state_dir / STATE_FILE)
    removed: list[str] = []
    if pid := _farm_running(data, state_dir):
        kill_recorded(pid, "provisiond", signal.SIGTERM, wait_s=_FARM_STOP_S)
        if pid_alive(pid):
            kill_recorded(pid, "provisiond", signal.SIGKILL, wait_s=3)
        removed.append(f"BMC farm (pid {pid})")
    pidfiles = set(state_dir.glob("vm*.pid"))
    for guest in data.get("guests", []):
        if isinstance(guest, dict) and isinstance(guest.get("pidfile"), str):
            pidfiles.add(Path(guest["pidfile"]))
    for pidfile in sorted(pidfiles):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if kill_recorded(pid, QEMU, signal.SIGKILL, wait_s=3):
                removed.append(f"QEMU {pidfile.stem} (pid {pid})")
    netns = f"pvd-{name}"
    if netns_exists(netns):
        users = netns_pids(netns)
        if users and not data and not pidfiles:
            raise Conflict(
                f"network namespace {netns} is in use (pids {', '.join(users[:5])}), and "
                f"{state_dir} holds no rack state: it may be a rack in another folder",
                hint=f"'provisiond rack down --name {name} --state-dir DIR' with its own folder",
            )
        delete_netns(netns)
        removed.append(f"network namespace {netns}")
    patterns = (
        STATE_FILE,
        READY_FILE,
        FARM_LOG,
        INVENTORY_FILE,
        NETWORK_FILE,
        PDU_COMMUNITY_FILE,
        "*.tmp",
        *GUEST_FILES,
    )
    files = sorted({p for pattern in patterns for p in state_dir.glob(pattern) if p.is_file()})
    for path in files:
        path.unlink(missing_ok=True)
    if files:
        removed.append(f"{len(files)} files in {state_dir}")
    with contextlib.suppress(OSError):
        state_dir.rmdir()  # only when empty: the folder may hold the user's own files
    return removed


def load(name: str = "vrack", state_dir: Path | None = None) -> RackState:
    state_dir = Path(state_dir or default_state_dir(name)).absolute()
    data = read_json(state_dir / STATE_FILE)
    try:
        return RackState.from_dict(data)
    except TypeError:
        raise NotFound(
            f"no virtual rack {name!r} in {state_dir}",
            hint=f"start one with 'provisiond rack up 2 {_args(name, state_dir)}'",
        ) from None


def status(name: str = "vrack", state_dir: Path | None = None) -> RackStatus:
    rack = load(name, state_dir)
    guests = []
    for g in rack.guests:
        pid = QemuBackend(g.qemu_guest(), rack.netns, rack.accel).pid()
        guests.append(
            GuestStatus(
                g.name, "on" if pid else "off", pid, g.bmc_port, last_line(Path(g.serial_log))
            )
        )
    farm = _farm_running(rack.to_dict(), Path(rack.state_dir)) is not None
    return RackStatus(rack, farm, guests)


# -- the farm process ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m provisiond.rack.vrack")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-bmcs", help="the rack's BMC farm (started by rack up)")
    serve.add_argument("--state", type=Path, required=True)
    serve.add_argument("--base-port", type=int, default=0)
    args = parser.parse_args(argv)
    rack = RackState.from_dict(read_json(args.state))
    with lldp_switch.speaking(rack):  # the rack's switch lives and dies with the farm
        serve_farm(
            [g.qemu_guest() for g in rack.guests],
            rack.netns,
            rack.accel,
            base_port=args.base_port,
            username=rack.bmc_username,
            password=os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD,
            pdu_name=pdu_name(rack.name),
            community=os.environ.get(PDU_COMMUNITY_ENV) or secrets.token_urlsafe(16),
            ready_file=args.state.with_name(READY_FILE),
        )


if __name__ == "__main__":
    main()
