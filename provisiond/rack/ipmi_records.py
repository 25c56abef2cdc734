"""Byte layouts a simulated BMC returns: FRU image, Get Device ID, LAN parameters, DCMI.

Pure functions of a :class:`BmcIdentity`, so they are tested without a network.
References are to the IPMI 2.0 spec and the Platform Management FRU Information
Storage Definition 1.0 ("FRU spec").
"""

from __future__ import annotations

import ipaddress
import time

from provisiond.rack.ipmi_machine import BmcIdentity

__all__ = [
    "channel_info",
    "dcmi_get_power_reading",
    "dcmi_power_reading",
    "device_id",
    "fru_image",
    "lan_parameter",
]

#: DCMI's group extension id, the first byte of every DCMI request and response.
DCMI_GROUP = 0xDC

MANUFACTURER_ID = 0x000000  # IANA "reserved": no pyghmi or ipmitool OEM quirks apply
PRODUCT_ID = 0x0001
_FRU_EPOCH = 820454400  # 1996-01-01T00:00Z, the FRU spec's date origin
_IPMI_IANA = 0x0001F2  # the IPMI forum's IANA number, used in Get Channel Info


def _checksum(data: bytes | bytearray) -> int:
    return (-sum(data)) & 0xFF


def _text(value: str) -> bytes:
    """An 8-bit ASCII type/length field (type 11b), truncated to the 63-byte maximum."""
    raw = value.encode("latin-1", "replace")[:63]
    return bytes([0xC0 | len(raw)]) + raw


def _area(body: bytes) -> bytes:
    """Close an area: end marker, pad to 8 bytes, checksum; the length goes in byte 1."""
    data = bytearray(body) + b"\xc1"
    data += b"\x00" * (-(len(data) + 1) % 8)
    data[1] = (len(data) + 1) // 8
    return bytes(data + bytes([_checksum(data)]))


def fru_image(identity: BmcIdentity, built: float = 1704067200.0) -> bytes:
    """FRU 0: chassis, board and product areas; the boot NIC's MAC is the product's extra."""
    chassis = _area(
        bytes([1, 0, 0x17])  # version, length, "rack mount chassis"
        + _text(identity.model)
        + _text(identity.serial)
    )
    minutes = int((built - _FRU_EPOCH) // 60)
    board = _area(
        bytes([1, 0, 0])  # version, length, language English
        + minutes.to_bytes(3, "little")
        + _text(identity.manufacturer)
        + _text(identity.product)
        + _text(identity.serial)
        + _text(identity.model)
        + _text("")  # FRU file ID
    )
    product = _area(
        bytes([1, 0, 0])
        + _text(identity.manufacturer)
        + _text(identity.product)
        + _text(identity.model)
        + _text(identity.version)
        + _text(identity.serial)
        + _text("")  # asset tag
        + _text("")  # FRU file ID
        + _text(identity.nic_mac)
    )
    offset = 1  # in 8-byte units, after the common header
    offsets = []
    for area in (chassis, board, product):
        offsets.append(offset)
        offset += len(area) // 8
    header = bytes([1, 0, *offsets, 0, 0])
    return header + bytes([_checksum(header)]) + chassis + board + product


def device_id(firmware: tuple[int, int] = (1, 0)) -> list[int]:
    """Get Device ID response data (IPMI 2.0 table 20-2), 15 bytes.

    Device revision bit 7 ("provides device SDRs") with no SDR repository and no
    sensor device tells pyghmi's inventory code not to walk an SDR we do not have.
    Additional device support: chassis device (bit 7) and FRU inventory (bit 3).
    """
    major, minor = firmware
    bcd_minor = ((minor // 10) << 4) | (minor % 10)
    return [
        0x20,
        0x81,
        major & 0x7F,
        bcd_minor,
        0x02,
        0x88,
        *MANUFACTURER_ID.to_bytes(3, "little"),
        *PRODUCT_ID.to_bytes(2, "little"),
        0,
        0,
        0,
        0,
    ]


def channel_info(channel: int) -> list[int] | None:
    """Get Channel Info for our one LAN channel (1, or 0x0E "this channel"), else None."""
    if channel not in (1, 0x0E):
        return None
    return [1, 0x04, 0x01, 0x80, *_IPMI_IANA.to_bytes(3, "little"), 0, 0]


def _mac(text: str) -> list[int]:
    return [int(part, 16) for part in text.split(":")]


def lan_parameter(identity: BmcIdentity, parameter: int) -> list[int] | None:
    """Get LAN Configuration Parameters data after the revision byte, or None if unsupported."""
    address = list(ipaddress.IPv4Address(identity.address).packed)
    values: dict[int, list[int]] = {
        0: [0],  # set complete
        1: [0x00],  # no IPMI 1.5 authentication types: RMCP+ only
        2: [0, 0, 0, 0, 0],
        3: address,
        4: [1],  # static address
        5: _mac(identity.bmc_mac),
        6: [255, 0, 0, 0],  # loopback's /8
        7: [0x40, 0x40, 0x10],
        12: [0, 0, 0, 0],
        13: [0] * 6,
        14: [0, 0, 0, 0],
        15: [0] * 6,
        16: list(b"public".ljust(18, b"\x00")),
        20: [0, 0],  # no VLAN
        21: [0],
        22: [1],  # one cipher suite entry...
        23: [0, 3],  # ...suite 3
        24: [0, 0x04, 0, 0, 0, 0, 0, 0, 0],  # suite 3 up to administrator
    }
    return values.get(parameter)


def dcmi_power_reading(watts: int, *, at: float, period_ms: int = 1000) -> list[int]:
    """DCMI 1.5 Get Power Reading, mode 1 (system power statistics), after the completion code.

    Group id; current, minimum, maximum and average watts (16-bit LE each; one sample,
    so all four are the current one); the IPMI timestamp (32-bit LE seconds); the
    statistics period (32-bit LE ms); the state byte, bit 6 "power measurement active".
    """
    value = max(0, min(0xFFFF, int(watts))).to_bytes(2, "little")
    return [
        DCMI_GROUP,
        *value * 4,
        *(int(at) & 0xFFFFFFFF).to_bytes(4, "little"),
        *period_ms.to_bytes(4, "little"),
        0x40,
    ]


def dcmi_get_power_reading(request: bytes | bytearray, watts: int) -> tuple[int, list[int]]:
    """(completion code, data) for a Get Power Reading request; only mode 1 is simulated."""
    if len(request) < 4 or request[0] != DCMI_GROUP or request[1] != 1:
        return 0xCC, []  # invalid data field: not DCMI, or mode 2 (enhanced)
    return 0x00, dcmi_power_reading(watts, at=time.time())
