"""LLDP (IEEE 802.1AB) for the machine agent: decode, encode and capture neighbour frames.

Standard library only: it travels with ``agent.py`` (``/opt/provisiond-agent/lldp.py``
on a machine and in the inspection ramdisk). :func:`decode` reads one Ethernet frame
(EtherType 0x88cc, 802.1Q-tagged or not) and raises :class:`LldpError`, a ValueError,
naming what is truncated or malformed; :func:`encode` builds one; :func:`capture`
listens on AF_PACKET sockets (root) for a bounded time; :func:`neighbours`, what the
agent reports, falls back to lldpd (``lldpcli``) when capture hears nothing. Each
neighbour has exactly the keys the daemon's cabling check reads: ``interface``,
``mac`` (this NIC's), ``chassis_id``, ``chassis_id_subtype``, ``system_name``,
``system_description``, ``port_id``, ``port_id_subtype``, ``port_description``,
``mgmt_addresses``, ``vlans`` (``[{"id", "name"}]``), ``pvid`` and ``ttl``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from typing import Any

ETH_P_LLDP = 0x88CC
LLDP_MULTICAST = "01:80:c2:00:00:0e"
VLAN_ETHERTYPES = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST, PACKET_OUTGOING = 263, 1, 0, 4
#: The longest capture window accepted, whatever the caller asks for.
MAX_WAIT_S = 300.0
#: Frames read per capture at most (a flood must not keep the agent busy).
MAX_FRAMES = 10_000
# fmt: off
#: Subtype numbers (1-7) of the Chassis ID and Port ID TLVs -> the names reported.
CHASSIS_SUBTYPES = dict(enumerate(("chassis_component", "interface_alias", "port_component",
                                   "mac", "network_address", "interface_name", "local"), 1))
PORT_SUBTYPES = dict(enumerate(("interface_alias", "port_component", "mac", "network_address",
                                "interface_name", "agent_circuit_id", "local"), 1))
# fmt: on
IDS = {1: ("chassis_id", CHASSIS_SUBTYPES, "Chassis ID"), 2: ("port_id", PORT_SUBTYPES, "Port ID")}
IEEE_8021 = b"\x00\x80\xc2"
#: IANA address family numbers (in network-address ids and management addresses).
FAMILIES = {1: 4, 2: 16}
#: lldpcli's id types -> ours (lldpd calls both unnamed component subtypes "unhandled").
LLDPCLI_TYPES = {"ifalias": "interface_alias", "mac": "mac", "ip": "network_address",
                 "ifname": "interface_name", "local": "local"}  # fmt: skip

log = logging.getLogger("provisiond-agent.lldp")


class LldpError(ValueError):
    """A frame that is not LLDP, or an LLDP frame that is truncated or malformed."""


# --- decoding -------------------------------------------------------------------


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _text(raw: bytes) -> str:
    """Printable text: control characters (NUL included) dropped, 255 characters at most."""
    text = raw.decode("utf-8", errors="replace")
    return "".join(c for c in text if c.isprintable() or c == " ")[:255]


def _address(raw: bytes, what: str) -> str:
    """An IANA family byte plus the address, as ``10.0.0.1`` or ``fd00::1``."""
    if not raw:
        raise LldpError(f"{what}: the address is empty")
    size = FAMILIES.get(raw[0])
    if size is None:
        return f"family-{raw[0]}:{raw[1:].hex()}"
    if len(raw) - 1 != size:
        raise LldpError(f"{what}: an IPv{4 if size == 4 else 6} address of {len(raw) - 1} bytes")
    return str(ipaddress.ip_address(raw[1:]))


def _id(raw: bytes, names: dict[int, str], what: str) -> tuple[str, str]:
    """(value, subtype name) of a Chassis ID or Port ID TLV."""
    if len(raw) < 2:
        raise LldpError(f"{what} TLV of {len(raw)} byte(s): no subtype and id")
    subtype, value = raw[0], raw[1:]
    name = names.get(subtype)
    if name is None:
        raise LldpError(f"{what} TLV has the reserved subtype {subtype}")
    if name == "mac":
        if len(value) != 6:
            raise LldpError(f"{what} TLV: a MAC address of {len(value)} bytes (not 6)")
        return _mac(value), name
    if name == "network_address":
        return _address(value, what), name
    if name == "agent_circuit_id" and not all(32 <= b < 127 for b in value):
        return value.hex(), name  # binary (RFC 3046): hex, not mojibake
    return _text(value), name


def _mgmt(raw: bytes) -> str:
    if len(raw) < 9 or not 2 <= raw[0] <= 32 or len(raw) < 1 + raw[0] + 6:
        raise LldpError(f"Management Address TLV of {len(raw)} bytes is malformed")
    return _address(raw[1 : 1 + raw[0]], "Management Address")


def _org(raw: bytes, found: dict[str, Any]) -> None:
    if len(raw) < 4:
        raise LldpError(f"Organizationally Specific TLV of {len(raw)} byte(s): no OUI and subtype")
    if raw[:3] != IEEE_8021:
        return
    subtype, body = raw[3], raw[4:]
    if subtype == 1:  # Port VLAN ID
        if len(body) != 2:
            raise LldpError(f"802.1 Port VLAN ID TLV with {len(body)} value bytes (not 2)")
        found["pvid"] = struct.unpack("!H", body)[0] or None  # 0: the port is untagged-only
    elif subtype == 3:  # VLAN Name
        if len(body) < 3 or len(body) != 3 + body[2]:
            raise LldpError(f"802.1 VLAN Name TLV of {len(body)} value bytes is malformed")
        vlan_id = struct.unpack("!H", body[:2])[0]
        found["vlans"].append({"id": vlan_id, "name": _text(body[3:])})


def decode(frame: bytes) -> dict[str, Any]:
    """The neighbour one Ethernet LLDP frame describes (keys: see the module doc)."""
    if len(frame) < 14:
        raise LldpError(f"a frame of {len(frame)} bytes is shorter than an Ethernet header")
    at, ethertype = 12, struct.unpack_from("!H", frame, 12)[0]
    while ethertype in VLAN_ETHERTYPES and at < 20:  # one tag, or two (802.1ad)
        if len(frame) < at + 6:
            raise LldpError("the frame ends inside its VLAN tag")
        at += 4
        ethertype = struct.unpack_from("!H", frame, at)[0]
    if ethertype != ETH_P_LLDP:
        raise LldpError(f"not an LLDP frame: EtherType 0x{ethertype:04x}, not 0x88cc")
    at += 2
    found: dict[str, Any] = {
        "chassis_id": None, "chassis_id_subtype": "", "system_name": "",
        "system_description": "", "port_id": None, "port_id_subtype": "",
        "port_description": "", "mgmt_addresses": [], "vlans": [], "pvid": None, "ttl": None,
    }  # fmt: skip
    while at < len(frame):
        if len(frame) - at < 2:
            raise LldpError(f"the frame ends inside a TLV header at byte {at}")
        header = struct.unpack_from("!H", frame, at)[0]
        kind, length = header >> 9, header & 0x1FF
        value = frame[at + 2 : at + 2 + length]
        if len(value) < length:
            raise LldpError(
                f"TLV type {kind} at byte {at} says {length} bytes, the frame has {len(value)}"
            )
        at += 2 + length
        if kind == 0:  # End of LLDPDU; what follows is padding
            break
        if kind in (1, 2):
            key, names, what = IDS[kind]
            found[key], found[f"{key}_subtype"] = _id(value, names, what)
        elif kind == 3:
            if length != 2:
                raise LldpError(f"Time To Live TLV of {length} bytes (not 2)")
            found["ttl"] = struct.unpack("!H", value)[0]
        elif kind in (4, 5, 6):
            key = {4: "port_description", 5: "system_name", 6: "system_description"}[kind]
            found[key] = _text(value)
        elif kind == 8:
            found["mgmt_addresses"].append(_mgmt(value))
        elif kind == 127:
            _org(value, found)
    for key, tlv in (("chassis_id", "Chassis ID"), ("port_id", "Port ID"), ("ttl", "Time To Live")):
        if found[key] is None:
            raise LldpError(f"the LLDPDU has no {tlv} TLV (mandatory)")
    return found


# --- encoding -------------------------------------------------------------------


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0x1FF:
        raise LldpError(f"TLV type {kind}: {len(value)} bytes is over the 511-byte limit")
    return struct.pack("!H", kind << 9 | len(value)) + value


def _packed_address(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    return bytes([1 if address.version == 4 else 2]) + address.packed


def _id_value(value: str, subtype: str, names: dict[int, str]) -> bytes:
    number = {name: n for n, name in names.items()}[subtype]
    if subtype == "mac":
        raw = bytes.fromhex(value.replace(":", "").replace("-", ""))
    elif subtype == "network_address":
        raw = _packed_address(value)
    else:
        raw = value.encode()
    return bytes([number]) + raw


def encode(
    neighbour: dict[str, Any],
    *,
    source_mac: str,
    vlan_tag: int | None = None,
    destination: str = LLDP_MULTICAST,
) -> bytes:
    """The Ethernet LLDP frame announcing ``neighbour`` (the keys :func:`decode` returns;
    ``chassis_id`` and ``port_id`` required, the rest optional; subtypes default to
    ``mac`` and ``interface_name``), padded to 60 bytes; ``vlan_tag`` adds an 802.1Q tag."""
    n = neighbour
    chassis = _id_value(n["chassis_id"], n.get("chassis_id_subtype") or "mac", CHASSIS_SUBTYPES)
    port = _id_value(n["port_id"], n.get("port_id_subtype") or "interface_name", PORT_SUBTYPES)
    body = _tlv(1, chassis) + _tlv(2, port) + _tlv(3, struct.pack("!H", n.get("ttl", 120)))
    for kind, key in ((4, "port_description"), (5, "system_name"), (6, "system_description")):
        if n.get(key):
            body += _tlv(kind, str(n[key]).encode())
    for address in n.get("mgmt_addresses", ()):
        packed = _packed_address(address)  # interface numbering: ifIndex 0; no OID
        body += _tlv(8, bytes([len(packed)]) + packed + b"\x02" + bytes(4) + b"\x00")
    if n.get("pvid") is not None:
        body += _tlv(127, IEEE_8021 + b"\x01" + struct.pack("!H", n["pvid"]))
    for vlan in n.get("vlans", ()):
        raw = str(vlan["name"]).encode()
        body += _tlv(127, IEEE_8021 + b"\x03" + struct.pack("!HB", vlan["id"], len(raw)) + raw)
    head = bytes.fromhex(destination.replace(":", "") + source_mac.replace(":", ""))
    if vlan_tag is not None:
        head += struct.pack("!HH", 0x8100, vlan_tag & 0xFFF)
    frame = head + struct.pack("!H", ETH_P_LLDP) + body + _tlv(0, b"")
    return frame.ljust(60, b"\0")


# --- capturing ------------------------------------------------------------------


def _macs(root: str) -> dict[str, str]:
    """Interface -> its MAC, for those up (IFF_UP) with an Ethernet address, ``lo`` aside."""
    base = os.path.join(root, "sys/class/net")
    found = {}
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, name, "flags")) as flags, \
                 open(os.path.join(base, name, "address")) as address:  # fmt: skip
                up, mac = int(flags.read().strip(), 16) & 0x1, address.read().strip().lower()
        except (OSError, ValueError):
            continue
        if name != "lo" and up and len(mac) == 17 and mac != "00:00:00:00:00:00":
            found[name] = mac
    return found


def _open(interface: str) -> tuple[socket.socket, bytes]:
    """A non-blocking LLDP socket on ``interface`` and the interface's MAC."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_LLDP))
    try:
        sock.bind((interface, ETH_P_LLDP))
        own = sock.getsockname()[4]
        # The NIC drops multicast it was not asked for: ask for LLDP's group.
        group = bytes.fromhex(LLDP_MULTICAST.replace(":", ""))
        mreq = struct.pack("iHH8s", socket.if_nametoindex(interface), PACKET_MR_MULTICAST, 6, group)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, own


def capture(
    interfaces: list[str], timeout_s: float, *, skipped: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Interface -> the first neighbour heard on it within ``timeout_s`` (<= MAX_WAIT_S) in all,
    or sooner once each has one; an interface that cannot be opened: reason in ``skipped``."""
    sockets: dict[socket.socket, tuple[str, bytes]] = {}
    for name in dict.fromkeys(interfaces):
        try:
            sock, own = _open(name)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            log.warning("LLDP: not listening on %s: %s", name, reason)
            if skipped is not None:
                skipped[name] = reason
            continue
        sockets[sock] = (name, own)
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + min(max(timeout_s, 0.0), MAX_WAIT_S)
    frames = 0
    try:
        while frames < MAX_FRAMES:
            waiting = [s for s, (name, _own) in sockets.items() if name not in found]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            ready, _, _ = select.select(waiting, [], [], left)
            for sock in ready:
                name, own = sockets[sock]
                try:
                    frame, address = sock.recvfrom(9216)
                except OSError:
                    continue
                frames += 1
                if address[2] == PACKET_OUTGOING or frame[6:12] == own:
                    continue  # our own frame (an lldpd on this machine), not a neighbour
                try:
                    neighbour = decode(frame)
                except LldpError as exc:
                    log.info("LLDP: ignoring a frame on %s: %s", name, exc)
                    continue
                found[name] = {"interface": name, "mac": _mac(own), **neighbour}
    finally:
        for sock in sockets:
            sock.close()
    return found


# --- lldpd's view, when capture hears nothing -----------------------------------


def _value(node: Any) -> str:
    """lldpcli nests values as {"value": x} or [{"value": x}] depending on version."""
    if isinstance(node, list):
        return _value(node[0]) if node else ""
    if isinstance(node, dict):
        return str(node.get("value", ""))
    return "" if node is None else str(node)


def _typed(node: Any) -> tuple[str, str]:
    node = node[0] if isinstance(node, list) and node else node
    kind = node.get("type", "") if isinstance(node, dict) else ""
    return _value(node), LLDPCLI_TYPES.get(str(kind), "local")


def _list(node: Any) -> list[Any]:
    """lldpcli gives a list, or the one item itself when there is only one."""
    return node if isinstance(node, list) else [] if node is None else [node]


def _int(text: Any) -> int | None:
    return int(text) if str(text).isdigit() else None


def _lldpcli_entry(name: str, body: dict[str, Any], mac: str) -> dict[str, Any]:
    chassis, system_name = body.get("chassis"), ""
    if isinstance(chassis, dict) and len(chassis) == 1 and "id" not in chassis:
        system_name, chassis = next(iter(chassis.items()))  # {"tor1": {...}}
    chassis = chassis if isinstance(chassis, dict) else {}
    port = body["port"] if isinstance(body.get("port"), dict) else {}
    vlans = [v for v in _list(body.get("vlan")) if isinstance(v, dict) and _int(v.get("vlan-id"))]
    pvids = [_int(v["vlan-id"]) for v in vlans if v.get("pvid") in (True, "yes")]
    ttl = port.get("ttl") or body.get("ttl")  # {"ttl": "120"} beside the port in lldpd 0.9
    chassis_id, chassis_type = _typed(chassis.get("id"))
    port_id, port_type = _typed(port.get("id"))
    return {
        "interface": name, "mac": mac, "chassis_id": chassis_id, "chassis_id_subtype": chassis_type,
        "system_name": str(system_name) or _value(chassis.get("name")),
        "system_description": _value(chassis.get("descr")), "port_id": port_id,
        "port_id_subtype": port_type, "port_description": _value(port.get("descr")),
        "mgmt_addresses": [str(a) for a in _list(chassis.get("mgmt-ip")) if a],
        "vlans": [{"id": _int(v["vlan-id"]), "name": _value(v)} for v in vlans],
        "pvid": pvids[0] if pvids else None,
        "ttl": _int(ttl.get("ttl") if isinstance(ttl, dict) else ttl) or 0,
    }  # fmt: skip


def from_lldpcli(text: str, macs: dict[str, str]) -> list[dict[str, Any]]:
    """Neighbours in ``lldpcli -f json show neighbors details``; ``macs``: interface -> MAC."""
    try:
        interfaces = json.loads(text).get("lldp", {}).get("interface", []) if text else []
    except (ValueError, AttributeError):
        return []
    if isinstance(interfaces, dict):  # {"eno1": {...}} when there is only one
        interfaces = [{name: body} for name, body in interfaces.items()]
    return [
        _lldpcli_entry(str(name), body, macs.get(str(name), ""))
        for entry in (interfaces if isinstance(interfaces, list) else [])
        for name, body in (entry.items() if isinstance(entry, dict) else [])
        if isinstance(body, dict)
    ]


def _lldpcli() -> str:
    if shutil.which("lldpcli") is None:
        return ""
    argv = ["lldpcli", "-f", "json", "show", "neighbors", "details"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def neighbours(root: str, wait_s: float) -> list[dict[str, Any]]:
    """What the agent reports: a capture on each interface that is up, else lldpd's view."""
    macs = _macs(root)
    heard = capture(list(macs), wait_s) if macs else {}
    if heard:
        return [heard[name] for name in sorted(heard)]
    return from_lldpcli(_lldpcli(), macs)
