"""The discovery probe's packets and its sweep, against ipmi_sim and empty ports."""

from __future__ import annotations

import asyncio

import pytest

from provisiond.drivers.power.ipmi_probe import (
    asf_ping,
    channel_auth_probe,
    expand_targets,
    parse_ports,
    parse_reply,
    sweep,
)
from provisiond.errors import BadRequest
from tests.support.ipmisim import IpmiSim, free_udp_port


def test_probe_matches_what_ipmitool_sends() -> None:
    # Captured from ipmitool 1.8.19 on a loopback UDP socket: `-I lanplus` opens with this
    # sessionless request (checksums included), `-I lan` with this ASF presence ping.
    assert channel_auth_probe(0).hex() == "0600ff07000000000000000000092018c88100388e04b5"
    assert asf_ping(0).hex() == "0600ff06000011be80000000"


def test_parse_reply_recognises_answers_and_ignores_noise() -> None:
    # A Get Channel Auth Caps response: completion 0, IPMI 2.0 extended caps.
    msg = bytes([0x81, 0x1C, 0x63, 0x20, 0x04, 0x38, 0x00, 0x01, 0x97, 0x04, 0x03, 0, 0, 0, 0])
    packet = bytes([6, 0, 0xFF, 7, 0]) + bytes(8) + bytes([len(msg)]) + msg
    assert parse_reply(packet) is not None
    assert parse_reply(packet).ipmi_v2  # type: ignore[union-attr]
    pong = bytes([6, 0, 0xFF, 6, 0, 0, 0x11, 0xBE, 0x40, 1, 0, 0x10]) + bytes(16)
    assert parse_reply(pong) is not None and parse_reply(pong).kind == "asf"  # type: ignore[union-attr]
    assert parse_reply(b"") is None
    assert parse_reply(b"GET / HTTP/1.1\r\n\r\n") is None
    assert parse_reply(asf_ping()) is None  # a ping is not a pong


def test_port_and_network_parsing() -> None:
    assert parse_ports("623") == [623]
    assert parse_ports("16000-16002, 623") == [623, 16000, 16001, 16002]
    for bad in ("", "0", "70000", "10-5", "abc", "1-2-3"):
        with pytest.raises(BadRequest):
            parse_ports(bad)
    assert expand_targets(["127.0.0.1/32"], [623, 624], 10) == [
        ("127.0.0.1", 623),
        ("127.0.0.1", 624),
    ]
    assert len(expand_targets(["127.0.1.0/30"], [623], 10)) == 2
    with pytest.raises(BadRequest, match="more than 4"):
        expand_targets(["127.0.0.0/24"], [623], 4)
    with pytest.raises(BadRequest, match="bad network"):
        expand_targets(["127.0.0.300/32"], [623], 4)


def test_sweep_finds_exactly_the_live_bmc(ipmi_sim: IpmiSim) -> None:
    empty = [free_udp_port() for _ in range(5)]
    targets = [("127.0.0.1", p) for p in [*empty, ipmi_sim.port]]
    found = asyncio.run(sweep(targets, timeout=0.5))
    assert list(found) == [("127.0.0.1", ipmi_sim.port)]
    assert found[("127.0.0.1", ipmi_sim.port)].kind == "ipmi"
