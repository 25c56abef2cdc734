"""IPMI identity: Get Device ID, FRU 0 with the system GUID, and the BMC's MAC, lean.

3-5 round trips per BMC (pyghmi's own reads take 15-18: five Get Device IDs and nine
LAN parameters for one MAC). Decoded as pyghmi decodes them; relies on pyghmi
1.6.19 internals (its FRU reader, OEM map, UUID decoder, channel search), which the
version pin in :mod:`provisiond.drivers.power.pyghmi_patch` holds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import fru as pyghmi_fru
from pyghmi.ipmi.oem import lookup as pyghmi_oem
from pyghmi.ipmi.private import util as pyghmi_util

from provisiond.drivers.power.base import BmcError, BmcUnreachable
from provisiond.logging import get_logger

log = get_logger(__name__)

VENDORS = {
    343: "Intel",
    674: "Dell",
    2: "IBM",
    11: "HPE",
    10876: "Supermicro",
    19046: "Lenovo",
    20301: "IBM",
    42385: "Huawei",
    4753: "OpenIPMI",
    40981: "provisiond-sim",
}

# The identity read's commands (IPMI 2.0): netfn App 0x06, Storage 0x0A, Transport 0x0C.
_APP, _TRANSPORT = 0x06, 0x0C
_GET_DEVICE_ID, _GET_SYSTEM_GUID = 0x01, 0x37
_GET_LAN_PARAMETER = 0x02
#: Channel 0x0E is "the channel this request came in on" (IPMI 2.0 section 6.3).
_PRESENT_CHANNEL = 0x0E
_LAN_MAC_ADDRESS = 5  # LAN configuration parameter 5
_LAN_PARAMETER_REVISION = 0x11  # the only revision pyghmi reads a LAN parameter at
#: What pyghmi's FRU parser may raise on a FRU image it cannot make sense of.
FRU_PARSE_ERRORS = (
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    struct.error,
    pyghmi_exc.PyghmiException,
)


def read_device_id(command: Any) -> dict[str, Any]:
    """Get Device ID, decoded as pyghmi's ``_get_device_id`` decodes it (one round trip)."""
    response = command.raw_command(netfn=_APP, command=_GET_DEVICE_ID)
    if "error" in response:
        raise pyghmi_exc.IpmiException(response["error"], code=response["code"])
    data = bytes(response["data"])
    if len(data) < 11:
        raise pyghmi_exc.IpmiException(
            f"short Get Device ID reply ({len(data)} bytes, at least 11 expected)"
        )
    return {
        "manufacturer_id": int.from_bytes(data[6:9], "little"),
        "product_id": int.from_bytes(data[9:11], "little"),
        "firmware_version": f"{data[2] & 0x7F}.{data[3] >> 4 & 0x0F}{data[3] & 0x0F}",
    }


def pyghmi_oem_handles(device: dict[str, Any]) -> bool:
    """Whether pyghmi has an OEM handler for this BMC, looked up as pyghmi looks it up."""
    keys = (f"{device['manufacturer_id']}.{device['product_id']}", device["manufacturer_id"])
    return any(key in pyghmi_oem.oemmap for key in keys)


class _FruFetch(pyghmi_fru.FRU):  # type: ignore[misc]
    """pyghmi's FRU reader that stops before parsing: the parse runs outside the BMC call."""

    fetched = False

    def parsedata(self) -> None:
        self.fetched = True


def fetch_fru_zero(command: Any) -> tuple[bytes | None, str | None]:
    """FRU 0's bytes (None if the BMC says it has none) and the system GUID, if it gives one.

    What pyghmi's ``get_inventory_of_component("System")`` reads, without its two
    extra Get Device IDs: the FRU through pyghmi's own reader (area info, then 224-byte
    reads, smaller if the BMC asks), then Get System GUID, read only when the FRU read
    did not fail, as pyghmi does.
    """
    fetch = _FruFetch(ipmicmd=command)
    raw = bytes(fetch.rawfru) if fetch.fetched and fetch.rawfru is not None else None
    response = command.raw_command(netfn=_APP, command=_GET_SYSTEM_GUID)
    guid = None
    if "error" not in response and len(response["data"]) >= 16:
        guid = str(pyghmi_util.decode_wireformat_uuid(bytearray(response["data"][:16])))
    return raw, guid


def read_bmc_mac(command: Any) -> str:
    """LAN parameter 5 of the channel this session uses, as ``aa:bb:cc:dd:ee:ff``, or "".

    One round trip: the request names channel 0x0E, "this channel". A BMC that refuses
    0x0E gets pyghmi's own channel search (Get Channel Info, cached per session) and
    the parameter of the channel it finds, as pyghmi's ``get_net_configuration`` reads.
    """
    request = [_PRESENT_CHANNEL, _LAN_MAC_ADDRESS, 0, 0]
    response = command.raw_command(netfn=_TRANSPORT, command=_GET_LAN_PARAMETER, data=request)
    if "error" in response:
        channel = command.get_network_channel()
        if channel is None:
            return ""  # no LAN channel found: pyghmi would have no MAC either
        request[0] = channel
        response = command.raw_command(netfn=_TRANSPORT, command=_GET_LAN_PARAMETER, data=request)
        if "error" in response:
            raise pyghmi_exc.IpmiException(response["error"], code=response["code"])
    data = bytes(response["data"])
    if len(data) != 7 or data[0] != _LAN_PARAMETER_REVISION or not any(data[1:]):
        return ""  # what pyghmi reads as no MAC (an all-zero one included)
    return ":".join(f"{byte:02x}" for byte in data[1:])


def read_fru_zero(
    run: Callable[[str, Callable[[Any], Any]], Any], device: dict[str, Any], endpoint: str
) -> dict[str, Any]:
    """FRU 0's fields, plus ``UUID`` (the system GUID); {} if the BMC has none to give.

    Only an unreachable BMC is an error: many BMCs have no FRU 0.
    """
    try:
        if pyghmi_oem_handles(device):
            # pyghmi's OEM handler rewrites FRU 0 for this vendor: take its reading.
            fru: dict[str, Any] = run(
                "read FRU 0", lambda command: command.get_inventory_of_component("System")
            )
            return fru or {}
        raw, guid = run("read FRU 0", fetch_fru_zero)
    except BmcUnreachable:
        raise
    except BmcError:
        return {}
    if raw is None:
        info: dict[str, Any] = {}  # no FRU 0 (pyghmi's "not present" codes)
    else:
        try:
            info = pyghmi_fru.FRU(rawdata=raw).info or {}
        except FRU_PARSE_ERRORS as exc:
            log.warning("fru_unreadable", bmc=endpoint, error=f"{type(exc).__name__}: {exc}")
            return {}
    if guid is not None and "UUID" not in info:
        info["UUID"] = guid
    return info
