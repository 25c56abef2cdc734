"""DCMI Get Power Reading over an IPMI session: the machine's draw as its BMC measures it.

DCMI 1.5 section 6.6.1: NetFn 0x2C (group extension), command 0x02, request
``DC 01 00 00`` (group id, mode 1 "system power statistics", two reserved bytes).
The response after the completion code is the group id, then current, minimum,
maximum and average watts (16-bit little-endian each), a 32-bit timestamp, a 32-bit
statistics period in ms, and a state byte whose bit 6 says the measurement is active.

A BMC without DCMI answers 0xC1 (invalid command); some answer 0xCC (invalid data
field: no group 0xDC), 0xCB (not present), 0xC9 (out of range) or 0xD6 (cannot run
in this state). Those mean "no power meter here", not a failure: :func:`request`
returns None for them and the driver stops asking that BMC.
"""

from __future__ import annotations

from typing import Any

NETFN_GROUP_EXTENSION = 0x2C
GET_POWER_READING = 0x02
DCMI_GROUP = 0xDC
MODE_SYSTEM_POWER_STATISTICS = 0x01
#: Completion codes that mean "this BMC has no DCMI power reading" (see the docstring).
UNSUPPORTED_CODES = frozenset({0xC1, 0xC9, 0xCB, 0xCC, 0xD6})
_MEASUREMENT_ACTIVE = 0x40


class NoDcmi(Exception):
    """The BMC answered that it has no DCMI power reading (a completion code above)."""


def request(command: Any) -> Any:
    """Get Power Reading on pyghmi ``command``: pyghmi's response dict.

    Raises :class:`NoDcmi` for the "not supported" codes; any other error stays in
    the dict, for the driver's usual classification.
    """
    response = command.raw_command(
        netfn=NETFN_GROUP_EXTENSION,
        command=GET_POWER_READING,
        data=(DCMI_GROUP, MODE_SYSTEM_POWER_STATISTICS, 0x00, 0x00),
    )
    if "error" in response and response.get("code") in UNSUPPORTED_CODES:
        raise NoDcmi(f"completion code 0x{response['code']:02X}: {response['error']}")
    return response


def current_watts(data: bytes | bytearray | list[int]) -> int | None:
    """The current reading from a response's data; None when not measuring or malformed."""
    raw = bytes(data)
    if len(raw) < 18 or raw[0] != DCMI_GROUP:
        return None
    if not raw[17] & _MEASUREMENT_ACTIVE:
        return None
    return int.from_bytes(raw[1:3], "little")
