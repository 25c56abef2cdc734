"""The virtual rack's state folder: what :mod:`provisiond.rack.vrack` writes and reads.

- ``rack.json``: :class:`RackState` with a :class:`GuestState` per guest, written
  atomically and read forgivingly (:func:`read_json` gives ``{}`` for a missing or
  partial file, which is what a crash leaves); ``bmc.ready`` and ``bmc.log`` are the
  farm's;
- ``inventory.yaml`` (:func:`inventory_yaml`) for ``provisiond inventory apply``: one
  machine per guest with its IPMI BMC, the password read from ``$PASSWORD_ENV``, and
  its NICs (a two-NIC guest's uncabled ``eth0`` too, its cabled ``eth1`` the PXE one),
  and the top-of-rack switch ``<rack>-sw1`` (:func:`switch_name`, chassis MAC
  :func:`switch_chassis_mac`) whose port ``swpK`` is planned for guest K's cabled NIC,
  as :mod:`provisiond.rack.lldp_switch` announces it; and the PDU ``<rack>-pdu1``
  (:func:`pdu_name`, SNMP v2c on ``127.0.0.1:pdu_port``, its community read from
  ``$PDU_COMMUNITY_ENV``) whose outlet K feeds guest K (:mod:`provisiond.rack.rack_farm`)
  unless ``pdu_miswire`` says otherwise, and the rack's ``power_budget_watts``;
- ``pdu.community`` (mode 0600): the PDU's SNMP community, random per rack unless
  given, to export as ``$PDU_COMMUNITY_ENV`` before ``provisiond inventory apply``;
- ``network.toml`` (:func:`network_toml`): a ``[[networks]]`` entry of the daemon's
  config (:class:`ProvisioningNetwork`) for the rack's bridge and namespace;
- ``vmK.disk`` (:func:`make_disk`): sparse, first and last MiB :data:`FILL`, so a
  wipe is visible.

The two config files are rendered as text from the state; ``vrack.up`` writes them
with :func:`write_atomic` once the BMC ports are known.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from provisiond.rack.qemu import QemuGuest

PASSWORD_ENV = "PROVISIOND_RACK_BMC_PASSWORD"  # noqa: S105 - a variable name
PDU_COMMUNITY_ENV = "PROVISIOND_RACK_PDU_COMMUNITY"
PDU_COMMUNITY_FILE = "pdu.community"
DEFAULT_POWER_BUDGET_W = 2000
STATE_FILE, READY_FILE, FARM_LOG = "rack.json", "bmc.ready", "bmc.log"
INVENTORY_FILE, NETWORK_FILE = "inventory.yaml", "network.toml"
GUEST_FILES = ("vm*.disk", "vm*.vars", "vm*.pid", "vm*.tmp", "vm*.serial.log")
FILL = b"\xa5" * (1 << 20)
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-B]|[=>c])")


@dataclass
class GuestState:
    index: int
    name: str
    mac: str
    ip: str
    tap: str
    disk: str
    serial_log: str
    pidfile: str
    bmc_address: str
    bmc_port: int
    ram_mib: int
    cpus: int
    disk_mib: int
    firmware: str = "bios"
    #: An uncabled first NIC's MAC; ``mac`` is then the second NIC's, the one on the bridge.
    unwired_mac: str = ""

    def qemu_guest(self) -> QemuGuest:
        g = self
        paths = Path(g.disk), Path(g.serial_log), Path(g.pidfile)
        return QemuGuest(
            g.name, g.mac, g.tap, *paths, ram_mib=g.ram_mib, cpus=g.cpus, firmware=g.firmware,
            unwired_mac=g.unwired_mac,
        )  # fmt: skip

    @property
    def switch_port(self) -> str:
        """The port of the rack's switch planned for this guest's cabled NIC."""
        return f"swp{self.index}"

    def nics(self, switch: str = "") -> list[dict[str, Any]]:
        """The guest's NICs as ops would plan them: the cabled one is the PXE NIC (on
        ``switch``'s port for this guest, when given)."""
        name = "eth1" if self.unwired_mac else "eth0"
        cabled = {"mac": self.mac, "name": name, "ip_address": self.ip, "pxe": True}
        if switch:
            cabled["switch_port"] = f"{switch}/{self.switch_port}"
        if not self.unwired_mac:
            return [cabled]
        return [{"mac": self.unwired_mac, "name": "eth0", "pxe": False}, cabled]


@dataclass
class RackState:
    """Everything ``rack.json`` records; enough for ``down`` and the farm."""

    name: str
    state_dir: str
    netns: str
    bridge: str
    subnet: str
    boot_address: str
    ipv6_prefix: str
    ipv6_address: str
    http_port: int
    accel: str
    bmc_username: str
    farm_pid: int | None = None
    guests: list[GuestState] = field(default_factory=list)
    #: A cabling fault: two guest names whose switch ports are swapped (lldp_switch).
    swap_cables: list[str] = field(default_factory=list)
    #: The PDU's SNMP port on 127.0.0.1 (rack_farm); 0 until the farm is up.
    pdu_port: int = 0
    #: An inventory fault: two guest names whose PDU outlets the inventory swaps.
    pdu_miswire: list[str] = field(default_factory=list)
    power_budget_watts: int = DEFAULT_POWER_BUDGET_W

    @property
    def inventory_file(self) -> Path:
        return Path(self.state_dir) / INVENTORY_FILE

    @property
    def network_file(self) -> Path:
        return Path(self.state_dir) / NETWORK_FILE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RackState:
        names = {f.name for f in fields(cls)}
        guests = [GuestState(**g) for g in data.get("guests", [])]
        return cls(**{k: v for k, v in data.items() if k in names and k != "guests"}, guests=guests)


def guest_mac(rack: str, index: int) -> str:
    """``52:54:00:HH:HH:KK``: HH:HH from the rack's name, KK the guest's index (plus 0x80
    for a two-NIC guest's uncabled first NIC)."""
    h = hashlib.sha256(rack.encode()).digest()
    return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{index:02x}"


def switch_name(rack: str) -> str:
    """The rack's top-of-rack switch, named as inventory/example.yaml names them."""
    return f"{rack}-sw1"


def switch_chassis_mac(rack: str) -> str:
    """``02:..``: a locally administered unicast MAC, the same for every rack of this name."""
    h = hashlib.sha256(f"switch:{rack}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def pdu_name(rack: str) -> str:
    """The rack's PDU, named as the switch is."""
    return f"{rack}-pdu1"


def pdu_outlets(rack: RackState) -> dict[str, int]:
    """Guest name -> the PDU outlet the inventory says feeds it (``pdu_miswire`` swapped;
    the simulator's wiring is always outlet K to guest K)."""
    outlets = {g.name: g.index for g in rack.guests}
    if len(rack.pdu_miswire) == 2 and set(rack.pdu_miswire) <= set(outlets):
        first, second = rack.pdu_miswire
        outlets[first], outlets[second] = outlets[second], outlets[first]
    return outlets


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    """The file's JSON object; {} when it is missing, partial or not JSON (after a crash)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def make_disk(path: Path, size_mib: int) -> None:
    with open(path, "wb") as disk:
        disk.truncate(size_mib << 20)  # sparse between the two marked MiB
        disk.write(FILL)
        disk.seek((size_mib - 1) << 20)
        disk.write(FILL)


def inventory_yaml(rack: RackState) -> str:
    outlets = pdu_outlets(rack)
    machines = [
        {
            "name": g.name,
            "rack": rack.name,
            "u_position": g.index,
            "arch": "x86_64",
            "cpus": g.cpus,
            "ram_mib": g.ram_mib,
            "tags": ["virtual"],
            "nics": g.nics(switch_name(rack.name)),
            "outlets": [f"{pdu_name(rack.name)}/{outlets[g.name]}"],
            "bmc": {
                "driver": "ipmi",
                "address": g.bmc_address,
                "port": g.bmc_port,
                "username": rack.bmc_username,
                "password_env": PASSWORD_ENV,
            },
        }
        for g in rack.guests
    ]
    switch = {
        "name": switch_name(rack.name),
        "rack": rack.name,
        "vendor": "virtual",
        "model": "provisiond-lldp",
        "mgmt_address": rack.boot_address,
        "chassis_mac": switch_chassis_mac(rack.name),
        "ports": [{"name": g.switch_port, "description": g.name} for g in rack.guests],
    }
    pdu = {
        "name": pdu_name(rack.name),
        "rack": rack.name,
        "capacity_watts": 3680,  # 16 A at 230 V
        "mgmt_address": "127.0.0.1",
        "driver": "apc_snmp",
        "snmp_port": rack.pdu_port,
        "snmp_version": "2c",
        "snmp_community_env": PDU_COMMUNITY_ENV,
        "outlets": len(rack.guests),
    }
    doc = {
        "version": 1,
        "racks": [
            {"name": rack.name, "site": "virtual", "u_height": 42,
             "power_budget_watts": rack.power_budget_watts}
        ],
        "switches": [switch],
        "pdus": [pdu],
        "machines": machines,
    }  # fmt: skip
    head = (
        f"# Virtual rack {rack.name!r} (provisiond rack up); BMC password from ${PASSWORD_ENV},\n"
        f"# PDU community from ${PDU_COMMUNITY_ENV} (its value: {PDU_COMMUNITY_FILE}).\n"
        f"#   provisiond inventory apply {rack.inventory_file}\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def last_line(path: Path) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            tail = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [_ANSI.sub("", line).strip() for line in re.split(r"[\r\n]", tail)]
    return next((line for line in reversed(lines) if line), "")


def network_toml(rack: RackState) -> str:
    net = ipaddress.IPv4Network(rack.subnet)
    values: dict[str, Any] = {
        "name": rack.name,
        "interface": rack.bridge,
        "netns": rack.netns,
        "subnet": rack.subnet,
        "boot_address": rack.boot_address,
        "http_port": rack.http_port,
        "dhcp_mode": "full",
        "range_start": str(net.network_address + 100),
        "range_end": str(net.network_address + 200),
        "ipv6_ra": True,
        "ipv6_prefix": rack.ipv6_prefix,
    }
    # json.dumps writes valid TOML basic strings, integers and booleans.
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    head = f"# Provisioning network of virtual rack {rack.name!r}: add to provisiond.toml.\n"
    return head + "[[networks]]\n" + "\n".join(lines) + "\n"
