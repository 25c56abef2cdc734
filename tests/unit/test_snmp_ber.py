"""The SNMPv1/v2c BER codec of the PDU read path: round trips, real answers byte for
byte, and malformed or hostile input rejected with a BerError (never IndexError)."""

from __future__ import annotations

import contextlib
import random

import pytest

from provisiond.drivers.pdu import ber
from provisiond.drivers.pdu.ber import BerError, decode_message, encode_message, encode_oid

OUTLET_1 = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.1"

#: A pysnmp 7 agent's answer (the PDU simulator, captured off the wire) to a v2c GET
#: of rPDUIdentDevicePowerWatts.0, outlet 1's command and outlet 9's (no such outlet).
PYSNMP_ANSWER = bytes.fromhex(
    "305b"  # SEQUENCE, 91 bytes
    "020101"  # version 1 (v2c)
    "040770726976617465"  # community "private"
    "a24d"  # Response-PDU, 77 bytes
    "02021234"  # request-id 0x1234
    "020100" "020100"  # error-status 0, error-index 0
    "3041"  # varbind list, 65 bytes
    "3012" "060d2b06010401823e01010c011000" "020100"  # ...12.1.16.0 = INTEGER 0
    "3015" "06102b06010401823e01010c0303010104" "01" "020101"  # ...4.1 = INTEGER 1
    "3014" "06102b06010401823e01010c0303010104" "09" "8100"  # ...4.9 = noSuchInstance
)  # fmt: skip

#: Written by hand after RFC 3416, as net-snmp's snmpd answers: a v2c Response with
#: request-id 0x7fffffff, sysUpTime (TimeTicks), ifInOctets.1 (Counter32, top bit set,
#: with its leading zero), ifSpeed.1 (Gauge32), sysName (OCTET STRING "pdu"),
#: sysObjectID (OID 1.3.6.1.4.1.318), a noSuchObject and an endOfMibView.
SNMPD_ANSWER = bytes.fromhex(
    "3081" "96"  # SEQUENCE, long-form length 150
    "020101" "0406" "7075626c6963"  # v2c, "public"
    "a281" "88"  # Response-PDU, long-form length 136
    "02047fffffff" "020100" "020100"
    "307a"  # varbind list, 122 bytes
    "3010" "06082b06010201010300" "4304" "00bc614e"  # sysUpTime.0 = TimeTicks 12345678
    "3013" "060a2b06010201020201" "0a01" "4105" "00ffffffff"  # ifInOctets.1 = 4294967295
    "3011" "060a2b06010201020201" "0501" "4203" "0f4240"  # ifSpeed.1 = Gauge32 1000000
    "300f" "06082b06010201010500" "0403" "706475"  # sysName.0 = "pdu"
    "3011" "06082b06010201010200" "0605" "2b06010401"  # sysObjectID.0 = OID 1.3.6.1.4.1
    "300c" "06082b06010201010400" "8000"  # sysContact.0 = noSuchObject
    "300c" "06082b06010201010600" "8200"  # sysLocation.0 = endOfMibView
)  # fmt: skip


def test_a_real_pysnmp_answer_decodes_field_by_field() -> None:
    answer = decode_message(PYSNMP_ANSWER)
    assert (answer.version, answer.community, answer.pdu_type) == (1, b"private", ber.RESPONSE)
    assert (answer.request_id, answer.error_status, answer.error_index) == (0x1234, 0, 0)
    assert [ber.oid_text(vb.oid) for vb in answer.varbinds] == [
        "1.3.6.1.4.1.318.1.1.12.1.16.0",
        OUTLET_1,
        "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.9",
    ]
    assert [(vb.tag, vb.value) for vb in answer.varbinds] == [(2, 0), (2, 1), (0x81, None)]


def test_a_hand_written_snmpd_answer_decodes_every_type() -> None:
    answer = decode_message(SNMPD_ANSWER)
    assert answer.request_id == 2**31 - 1 and answer.community == b"public"
    got = [(ber.oid_text(vb.oid), vb.tag, vb.value) for vb in answer.varbinds]
    assert got == [
        ("1.3.6.1.2.1.1.3.0", ber.TIMETICKS, 12345678),
        ("1.3.6.1.2.1.2.2.1.10.1", ber.COUNTER32, 2**32 - 1),
        ("1.3.6.1.2.1.2.2.1.5.1", ber.GAUGE32, 1000000),
        ("1.3.6.1.2.1.1.5.0", ber.OCTET_STRING, b"pdu"),
        ("1.3.6.1.2.1.1.2.0", ber.OID, (1, 3, 6, 1, 4, 1)),
        ("1.3.6.1.2.1.1.4.0", ber.NO_SUCH_OBJECT, None),
        ("1.3.6.1.2.1.1.6.0", ber.END_OF_MIB_VIEW, None),
    ]


def test_a_get_request_matches_net_snmp_bytes() -> None:
    # snmpget -v2c -c public HOST 1.3.6.1.2.1.1.3.0, request-id 1234, as on the wire.
    wire = "302702010104067075626c6963a01a020204d2020100020100300e300c06082b060102010103000500"
    oid = encode_oid("1.3.6.1.2.1.1.3.0")
    assert encode_message(1, b"public", ber.GET, 1234, [(oid, None)]).hex() == wire


def test_round_trip_of_every_value_type_and_long_lengths() -> None:
    values = [
        (ber.INTEGER, -(2**31), ber.encode_integer(-(2**31))),
        (ber.INTEGER, 2**31 - 1, ber.encode_integer(2**31 - 1)),
        (ber.INTEGER, 0, ber.encode_integer(0)),
        (ber.COUNTER32, 2**32 - 1, ber.encode_integer(2**32 - 1, ber.COUNTER32)),
        (ber.GAUGE32, 128, ber.encode_integer(128, ber.GAUGE32)),
        (ber.TIMETICKS, 1, ber.encode_integer(1, ber.TIMETICKS)),
        (ber.COUNTER64, 2**64 - 1, ber.encode_integer(2**64 - 1, ber.COUNTER64)),
        (ber.OCTET_STRING, b"x" * 300, ber.encode_octets(b"x" * 300)),  # 0x82 length
        (ber.IPADDRESS, b"\x7f\x00\x00\x01", ber.encode_octets(b"\x7f\0\0\1", ber.IPADDRESS)),
        (ber.OID, (2, 999, 2**32 - 1), encode_oid("2.999.4294967295")),
        (ber.NULL, None, None),
    ]
    oids = [f"1.3.6.1.4.1.99.{i}.{2**31 + i}" for i in range(len(values))]
    binds = [(encode_oid(o), enc) for o, (_, _, enc) in zip(oids, values, strict=True)]
    message = encode_message(1, b"c" * 200, ber.RESPONSE, 7, binds)
    answer = decode_message(message)
    assert answer.community == b"c" * 200 and answer.request_id == 7
    assert [ber.oid_text(vb.oid) for vb in answer.varbinds] == oids
    assert [(vb.tag, vb.value) for vb in answer.varbinds] == [(t, v) for t, v, _ in values]
    bulk = encode_message(1, b"p", ber.GETBULK, 9, binds[:1], non_repeaters=0, max_repetitions=48)
    got = decode_message(bulk)
    assert (got.pdu_type, got.error_status, got.error_index) == (ber.GETBULK, 0, 48)


@pytest.mark.parametrize(
    ("oid", "why"),
    [("1", "arcs"), ("3.1", "valid"), ("1.40", "valid"), ("1.3.x", "dotted"), ("1.3.-1", "valid")],
)
def test_bad_object_identifiers_are_refused(oid: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        encode_oid(oid)


def test_every_truncation_is_a_ber_error() -> None:
    for message in (PYSNMP_ANSWER, SNMPD_ANSWER):
        for cut in range(len(message)):
            with pytest.raises(BerError):
                decode_message(message[:cut])


def _patched(after: str, new: str) -> bytes:
    """The pysnmp answer with ``new`` written just after the first ``after``."""
    data = bytearray(PYSNMP_ANSWER)
    at = data.index(bytes.fromhex(after)) + len(bytes.fromhex(after))
    data[at : at + len(bytes.fromhex(new))] = bytes.fromhex(new)
    return bytes(data)


FIRST_NAME = "3012"  # the first varbind's header: its name follows
FIRST_VALUE = "060d2b06010401823e01010c011000"  # the first name: its value follows


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (PYSNMP_ANSWER + b"\x00", "bytes after the message"),
        (b"\x30\x84\xff\xff\xff\xff" + PYSNMP_ANSWER[2:], "runs past the end"),
        (b"\x30\x85\x00\x00\x00\x00\x5b" + PYSNMP_ANSWER[2:], "5-byte length field"),
        (b"\x30\x80" + PYSNMP_ANSWER[2:] + b"\0\0", "indefinite length"),
        (b"\x3f\x5b" + PYSNMP_ANSWER[2:], "multi-byte tag"),
        (_patched("305b02", "0103"), "version field 3"),
        (_patched("70726976617465", "a4"), "unknown PDU type"),
        (_patched(FIRST_NAME, "02"), "expected tag 0x06"),  # an INTEGER where a name is
        (_patched(FIRST_VALUE, "05"), "NULL or exception value with content"),
        (_patched(FIRST_VALUE, "07"), "unknown value tag 0x07"),
        (b"\x30\x05\x02\x01\x01\x02\x00", "expected tag 0x04"),
        (bytes(70000), "larger than any UDP datagram"),
        (
            encode_message(1, b"p", ber.RESPONSE, 1, [(encode_oid("1.3"), b"\x02\x06" + bytes(6))]),
            "INTEGER of 6 bytes",
        ),
        (
            encode_message(
                1, b"p", ber.RESPONSE, 1, [(encode_oid("1.3"), b"\x41\x05\x01" + bytes(4))]
            ),
            "out of range",
        ),
        (encode_message(1, b"p", ber.RESPONSE, 1, [(b"\x06\x02\x2b\x86", None)]), "cut off"),
        (
            encode_message(1, b"p", ber.RESPONSE, 1, [(encode_oid("1.3"), b"\x40\x03abc")]),
            "IpAddress of 3 bytes",
        ),
    ],
)
def test_malformed_messages_say_what_is_wrong(data: bytes, match: str) -> None:
    with pytest.raises(BerError, match=match):
        decode_message(data)


def test_a_fault_after_the_request_id_names_it() -> None:
    with pytest.raises(BerError) as caught:
        decode_message(_patched(FIRST_VALUE, "07"))
    assert caught.value.request_id == 0x1234
    with pytest.raises(BerError) as early:
        decode_message(_patched("305b02", "0103"))
    assert early.value.request_id is None


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "empty"),
        (b"\x2b\x86", "cut off"),
        (b"\x2b\x80\x01", "padding"),
        (b"\x2b\x90\x80\x80\x80\x00", "larger than 2\\^32"),
        (b"\x2b" + b"\x01" * 128, "more than 128 arcs"),
    ],
)
def test_malformed_object_identifiers(raw: bytes, match: str) -> None:
    # Names in a response stay raw (the client compares them with what it asked);
    # showing one decodes it, strictly.
    with pytest.raises(BerError, match=match):
        ber.oid_text(raw)


def test_random_corruption_never_escapes_as_another_error() -> None:
    rng = random.Random(20240611)
    for message in (PYSNMP_ANSWER, SNMPD_ANSWER):
        for _ in range(3000):
            data = bytearray(message)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            with contextlib.suppress(BerError):
                decode_message(bytes(data))
        for _ in range(500):
            with contextlib.suppress(BerError):
                decode_message(rng.randbytes(rng.randrange(1, 200)))
