"""LLDP frames decoded by the agent's ``lldp`` module, from bytes written out by hand here.

The frames are built TLV by TLV with ``struct`` (or typed out in hex), not with
``lldp.encode``, so a bug shared by the encoder and the decoder cannot hide; the
encoder gets its own round trip at the end. Every broken frame must raise
:class:`lldp.LldpError` (a ValueError) with a message naming the problem, and no
cut or flipped byte may raise anything else (IndexError, struct.error, ...).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
from typing import Any

import pytest

from provisiond.agent import agent, lldp

NEIGHBOUR_KEYS = {
    "interface", "mac", "chassis_id", "chassis_id_subtype", "system_name",
    "system_description", "port_id", "port_id_subtype", "port_description",
    "mgmt_addresses", "vlans", "pvid", "ttl",
}  # fmt: skip
DST = bytes.fromhex("0180c200000e")
SRC = bytes.fromhex("021122334455")


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!H", (kind << 9) | len(value)) + value


def frame(*tlvs: bytes, ethertype: bytes = b"\x88\xcc", end: bool = True) -> bytes:
    return DST + SRC + ethertype + b"".join(tlvs) + (b"\x00\x00" if end else b"")


CHASSIS_MAC = tlv(1, b"\x04" + bytes.fromhex("02aabbccddee"))
PORT_IFNAME = tlv(2, b"\x05swp7")
TTL = tlv(3, b"\x00\x78")


def test_chassis_mac_and_port_interface_name_typed_out_in_hex() -> None:
    raw = bytes.fromhex(
        "0180c200000e" "021122334455" "88cc"  # Ethernet header
        "0207" "04" "02aabbccddee"  # Chassis ID, MAC subtype
        "0405" "05" "73777037"  # Port ID, interface name "swp7"
        "0602" "0078"  # TTL 120
        "0807" "746f20766d3100"  # Port Description, 7 bytes: "to vm1\0"
        "0a03" "737731"  # System Name "sw1"
        "0000"  # End
    )  # fmt: skip
    n = lldp.decode(raw)
    assert n["chassis_id"] == "02:aa:bb:cc:dd:ee" and n["chassis_id_subtype"] == "mac"
    assert n["port_id"] == "swp7" and n["port_id_subtype"] == "interface_name"
    assert n["ttl"] == 120 and n["system_name"] == "sw1"
    assert n["port_description"] == "to vm1"  # the NUL is dropped, not kept
    assert n["mgmt_addresses"] == [] and n["vlans"] == [] and n["pvid"] is None
    assert set(n) | {"interface", "mac"} == NEIGHBOUR_KEYS


def test_port_id_as_a_mac_address() -> None:
    n = lldp.decode(frame(CHASSIS_MAC, tlv(2, b"\x03" + bytes.fromhex("52540012AB01")), TTL))
    assert (n["port_id"], n["port_id_subtype"]) == ("52:54:00:12:ab:01", "mac")


def test_locally_assigned_port_id_and_other_text_subtypes() -> None:
    for subtype, name in ((7, "local"), (1, "interface_alias"), (2, "port_component")):
        n = lldp.decode(frame(CHASSIS_MAC, tlv(2, bytes([subtype]) + b"Gi1/0/12"), TTL))
        assert (n["port_id"], n["port_id_subtype"]) == ("Gi1/0/12", name)
    n = lldp.decode(frame(tlv(1, b"\x07chassis-9"), PORT_IFNAME, TTL))
    assert (n["chassis_id"], n["chassis_id_subtype"]) == ("chassis-9", "local")
    n = lldp.decode(frame(tlv(1, b"\x01FOC1234X"), PORT_IFNAME, TTL))
    assert n["chassis_id_subtype"] == "chassis_component"


def test_agent_circuit_id_text_or_hex() -> None:
    n = lldp.decode(frame(CHASSIS_MAC, tlv(2, b"\x06circuit-1"), TTL))
    assert (n["port_id"], n["port_id_subtype"]) == ("circuit-1", "agent_circuit_id")
    n = lldp.decode(frame(CHASSIS_MAC, tlv(2, b"\x06\x01\x04\x00\x0a\xff\x00"), TTL))
    assert n["port_id"] == "0104000aff00"


def test_network_address_chassis_id_ipv4_and_ipv6() -> None:
    n = lldp.decode(frame(tlv(1, b"\x05\x01" + bytes([10, 213, 0, 1])), PORT_IFNAME, TTL))
    assert (n["chassis_id"], n["chassis_id_subtype"]) == ("10.213.0.1", "network_address")
    v6 = bytes.fromhex("fd000213000000000000000000000001")
    n = lldp.decode(frame(tlv(1, b"\x05\x02" + v6), PORT_IFNAME, TTL))
    assert n["chassis_id"] == "fd00:213::1"
    n = lldp.decode(frame(CHASSIS_MAC, tlv(2, b"\x04\x01" + bytes([192, 0, 2, 7])), TTL))
    assert (n["port_id"], n["port_id_subtype"]) == ("192.0.2.7", "network_address")


def mgmt(family: int, address: bytes, oid: bytes = b"") -> bytes:
    # address string length (family byte included), family, address, interface
    # numbering subtype (2: ifIndex), interface number, OID length, OID
    body = bytes([1 + len(address), family]) + address + b"\x02" + struct.pack("!I", 3)
    return tlv(8, body + bytes([len(oid)]) + oid)


def test_management_addresses_ipv4_and_ipv6() -> None:
    v6 = bytes.fromhex("20010db8000000000000000000000042")
    n = lldp.decode(
        frame(CHASSIS_MAC, PORT_IFNAME, TTL, mgmt(1, bytes([10, 0, 0, 2]), b"\x2b\x06"),
              mgmt(2, v6))
    )  # fmt: skip
    assert n["mgmt_addresses"] == ["10.0.0.2", "2001:db8::42"]


def org(subtype: int, body: bytes, oui: bytes = b"\x00\x80\xc2") -> bytes:
    return tlv(127, oui + bytes([subtype]) + body)


def test_8021_port_vlan_id_and_vlan_names() -> None:
    n = lldp.decode(
        frame(CHASSIS_MAC, PORT_IFNAME, TTL,
              org(1, struct.pack("!H", 100)),
              org(3, struct.pack("!HB", 100, 4) + b"prov"),
              org(3, struct.pack("!HB", 200, 7) + b"storage"),
              org(2, b"\x06\x00\x00"),  # port and protocol VLAN: not reported
              org(1, b"\x00\x01", oui=b"\x00\x12\x0f"))  # another OUI (802.3): ignored
    )  # fmt: skip
    assert n["pvid"] == 100
    assert n["vlans"] == [{"id": 100, "name": "prov"}, {"id": 200, "name": "storage"}]


def test_vlan_tagged_frames() -> None:
    body = CHASSIS_MAC + PORT_IFNAME + TTL + b"\x00\x00"
    tagged = DST + SRC + b"\x81\x00" + struct.pack("!H", 0x2064) + b"\x88\xcc" + body
    assert lldp.decode(tagged)["port_id"] == "swp7"
    qinq = DST + SRC + b"\x88\xa8\x00\x0a" + b"\x81\x00\x00\x64" + b"\x88\xcc" + body
    assert lldp.decode(qinq)["chassis_id"] == "02:aa:bb:cc:dd:ee"


def test_padding_after_the_end_tlv_and_a_missing_end_tlv() -> None:
    padded = frame(CHASSIS_MAC, PORT_IFNAME, TTL).ljust(60, b"\x00") + b"\xff\xff"
    assert lldp.decode(padded)["ttl"] == 120
    assert lldp.decode(frame(CHASSIS_MAC, PORT_IFNAME, TTL, end=False))["ttl"] == 120


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (DST + SRC, "shorter than an Ethernet header"),
        (DST + SRC + b"\x08\x00" + bytes(40), "not an LLDP frame: EtherType 0x0800"),
        (DST + SRC + b"\x81\x00\x00", "ends inside its VLAN tag"),
        (frame(CHASSIS_MAC, PORT_IFNAME, end=False) + b"\x06", "inside a TLV header"),
        (frame(CHASSIS_MAC, end=False) + b"\x04\x05\x05sw", "says 5 bytes, the frame has 3"),
        (frame(CHASSIS_MAC, PORT_IFNAME), "no Time To Live TLV"),
        (frame(PORT_IFNAME, TTL), "no Chassis ID TLV"),
        (frame(CHASSIS_MAC, TTL), "no Port ID TLV"),
        (frame(tlv(1, b"\x04\x02\xaa"), PORT_IFNAME, TTL), "MAC address of 2 bytes"),
        (frame(tlv(1, b"\x04"), PORT_IFNAME, TTL), "no subtype and id"),
        (frame(tlv(1, b"\x00abc"), PORT_IFNAME, TTL), "reserved subtype 0"),
        (frame(CHASSIS_MAC, tlv(2, b"\x08x"), TTL), "reserved subtype 8"),
        (frame(tlv(1, b"\x05\x01\x0a\x00"), PORT_IFNAME, TTL), "IPv4 address of 2 bytes"),
        (frame(CHASSIS_MAC, PORT_IFNAME, tlv(3, b"\x78")), "Time To Live TLV of 1 bytes"),
        (frame(CHASSIS_MAC, PORT_IFNAME, TTL, tlv(8, b"\x05\x01\x0a")), "Management Address"),
        (frame(CHASSIS_MAC, PORT_IFNAME, TTL, tlv(127, b"\x00\x80")), "no OUI and subtype"),
        (frame(CHASSIS_MAC, PORT_IFNAME, TTL, org(1, b"\x64")), "Port VLAN ID TLV with 1"),
        (frame(CHASSIS_MAC, PORT_IFNAME, TTL, org(3, b"\x00\x64\x09ab")), "VLAN Name TLV"),
    ],
)
def test_truncated_and_malformed_frames_raise_lldp_error(raw: bytes, message: str) -> None:
    with pytest.raises(lldp.LldpError, match=message) as caught:
        lldp.decode(raw)
    assert isinstance(caught.value, ValueError)


def test_no_cut_or_flipped_byte_raises_anything_but_lldp_error() -> None:
    good = frame(
        CHASSIS_MAC, PORT_IFNAME, TTL, tlv(4, b"to vm1"), tlv(5, b"sw1"),
        mgmt(1, bytes([10, 0, 0, 2])), org(1, b"\x00\x64"), org(3, b"\x00\x64\x04prov"),
    )  # fmt: skip
    assert lldp.decode(good)["pvid"] == 100
    broken = [good[:cut] for cut in range(len(good))]
    rng = random.Random(14)  # seeded: the same frames on every run
    for _ in range(3000):
        flipped = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(14, len(flipped))] = rng.randrange(256)
        broken.append(bytes(flipped))
    errors = 0
    for raw in broken:
        try:
            lldp.decode(raw)
        except lldp.LldpError:
            errors += 1
    assert errors >= len(good) - 1  # every cut before the End TLV at least


def test_text_fields_are_printable_and_bounded() -> None:
    n = lldp.decode(frame(CHASSIS_MAC, PORT_IFNAME, TTL, tlv(6, b"Linux\x00\x07 6.1" + b"x" * 400)))
    assert n["system_description"].startswith("Linux 6.1") and len(n["system_description"]) == 255


def test_encode_decode_round_trip() -> None:
    sent = {
        "chassis_id": "02:aa:bb:cc:dd:ee", "chassis_id_subtype": "mac",
        "system_name": "vrack-sw1", "system_description": "a switch",
        "port_id": "swp3", "port_id_subtype": "interface_name", "port_description": "vm3",
        "mgmt_addresses": ["10.213.0.1", "fd00:213::1"],
        "vlans": [{"id": 100, "name": "prov"}], "pvid": 100, "ttl": 8,
    }  # fmt: skip
    raw = lldp.encode(sent, source_mac="02:aa:bb:cc:dd:ee")
    assert raw[:12] == DST + bytes.fromhex("02aabbccddee") and raw[12:14] == b"\x88\xcc"
    assert lldp.decode(raw) == sent
    tagged = lldp.encode(sent, source_mac="02:aa:bb:cc:dd:ee", vlan_tag=100)
    assert tagged[12:16] == b"\x81\x00\x00\x64" and lldp.decode(tagged) == sent
    mac = "02:00:00:00:00:01"
    for subtype, value in (("network_address", "10.0.0.1"), ("local", "7"), ("mac", mac)):
        sent = {"chassis_id": value, "chassis_id_subtype": subtype, "port_id": "p",
                "port_id_subtype": "local"}  # fmt: skip
        got = lldp.decode(lldp.encode(sent, source_mac=mac))
        assert (got["chassis_id"], got["chassis_id_subtype"]) == (value, subtype)
        assert (got["port_id"], got["port_id_subtype"], got["ttl"]) == ("p", "local", 120)
    assert len(lldp.encode({"chassis_id": mac, "port_id": "p"}, source_mac=mac)) == 60  # padded


LLDPCLI: dict[str, Any] = {
    "lldp": {
        "interface": [
            {"eth0": {
                "via": "LLDP",
                "chassis": {"tor1": {"id": {"type": "mac", "value": "02:1f:00:aa:00:01"},
                                     "descr": "SONiC", "mgmt-ip": ["10.0.0.2", "fd00::2"]}},
                "port": {"id": {"type": "ifname", "value": "Ethernet12"}, "descr": "node1",
                         "ttl": "120"},
                "vlan": {"vlan-id": "100", "pvid": True, "value": "prov"},
            }},
            {"eth1": {
                "chassis": {"id": [{"type": "local", "value": "abc"}], "name": [{"value": "sw9"}]},
                "port": {"id": {"type": "mac", "value": "52:54:00:00:00:09"}},
                "ttl": {"ttl": "90"},
                "vlan": [{"vlan-id": "5", "value": "a"}, {"vlan-id": "6", "pvid": "yes"}],
            }},
        ]
    }
}  # fmt: skip


def test_lldpcli_output_gives_the_same_keys() -> None:
    macs = {"eth0": "52:54:00:aa:bb:cc", "eth1": "52:54:00:aa:bb:cd"}
    first, second = lldp.from_lldpcli(json.dumps(LLDPCLI), macs)
    assert first == {
        "interface": "eth0", "mac": "52:54:00:aa:bb:cc",
        "chassis_id": "02:1f:00:aa:00:01", "chassis_id_subtype": "mac",
        "system_name": "tor1", "system_description": "SONiC",
        "port_id": "Ethernet12", "port_id_subtype": "interface_name", "port_description": "node1",
        "mgmt_addresses": ["10.0.0.2", "fd00::2"], "vlans": [{"id": 100, "name": "prov"}],
        "pvid": 100, "ttl": 120,
    }  # fmt: skip
    assert set(second) == NEIGHBOUR_KEYS
    assert (second["chassis_id"], second["chassis_id_subtype"]) == ("abc", "local")
    assert second["system_name"] == "sw9" and second["port_id_subtype"] == "mac"
    assert second["ttl"] == 90 and second["pvid"] == 6 and len(second["vlans"]) == 2
    one = {"lldp": {"interface": {"eth0": LLDPCLI["lldp"]["interface"][0]["eth0"]}}}
    assert lldp.from_lldpcli(json.dumps(one), macs) == [first]
    for junk in ("", "not json", "[]", '{"lldp": []}', '{"lldp": {"interface": [1, {"x": 2}]}}'):
        assert lldp.from_lldpcli(junk, macs) == []


def test_the_agent_checks_its_lldp_wait() -> None:
    assert agent.lldp_seconds("0") == 0 and agent.lldp_seconds("35") == 35
    for bad in ("x", "-1", "nan", "inf", "301"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not 0 to 300 seconds"):
            agent.lldp_seconds(bad)
    assert agent.parse_args(["--print-inventory", "--lldp-wait", "2.5"]).lldp_wait == 2.5
