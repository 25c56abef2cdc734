"""A small, strict BER codec for SNMPv1/v2c messages (RFC 3416), for the PDU read path.

pysnmp's hlapi resolves every object against its MIB tables and pyasn1 builds an
object per tag; for a poll of 50 PDUs x 97 objects that was ~1.5 s of CPU. This
codec handles only what a v1/v2c GET, GETBULK or SET and their Response carry:

- the message ``SEQUENCE { INTEGER version, OCTET STRING community, PDU }``;
- PDUs ``[0..3, 5] { request-id, error-status, error-index, varbinds }``;
- values INTEGER, OCTET STRING, NULL, OBJECT IDENTIFIER, IpAddress, Counter32,
  Gauge32, TimeTicks, Opaque, Counter64, and the v2c exceptions noSuchObject,
  noSuchInstance and endOfMibView.

Decoding is strict and bounded: every length is checked against what is left,
lengths are definite and at most 4 bytes long, integers at most their type's size,
every constructed value must be filled exactly; anything else raises
:class:`BerError` saying what is wrong and where (never an IndexError). Object
identifiers in a response stay as their encoded bytes (:attr:`VarBind.oid`), so a
reply is matched to its request by comparing bytes; :func:`oid_text` shows one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EXCEPTIONS",
    "GET",
    "GETBULK",
    "INTEGER_TAGS",
    "RESPONSE",
    "SET",
    "BerError",
    "Response",
    "VarBind",
    "decode_message",
    "encode_integer",
    "encode_message",
    "encode_octets",
    "encode_oid",
    "oid_arcs",
    "oid_body",
    "oid_text",
]

INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IPADDRESS, COUNTER32, GAUGE32, TIMETICKS, OPAQUE, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x44, 0x46
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
GET, GETNEXT, RESPONSE, SET, GETBULK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5
_PDU_TYPES = frozenset((GET, GETNEXT, RESPONSE, SET, GETBULK))
#: Tags whose value decodes to an int, and their largest encoded size and value.
_UNSIGNED = {COUNTER32: (5, 2**32 - 1), GAUGE32: (5, 2**32 - 1), TIMETICKS: (5, 2**32 - 1)}
_UNSIGNED[COUNTER64] = (9, 2**64 - 1)
INTEGER_TAGS = frozenset((INTEGER, *_UNSIGNED))
EXCEPTIONS = {
    NO_SUCH_OBJECT: "noSuchObject",
    NO_SUCH_INSTANCE: "noSuchInstance",
    END_OF_MIB_VIEW: "endOfMibView",
}
_BYTES_TAGS = frozenset((OCTET_STRING, IPADDRESS, OPAQUE))
MAX_MESSAGE = 65507  # the largest UDP payload
MAX_OID_ARCS = 128  # RFC 2578
_NULL = b"\x05\x00"

Value = int | bytes | tuple[int, ...] | None


class BerError(ValueError):
    """A malformed SNMP message; ``request_id`` is set when it was read before the fault."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class VarBind:
    """One object of a response: its encoded OID (content bytes), value tag and value.

    ``value`` is an int for :data:`INTEGER_TAGS`, bytes for OCTET STRING, IpAddress
    and Opaque, a tuple for an OID, None for NULL and the v2c exceptions.
    """

    oid: bytes
    tag: int
    value: Value


@dataclass(frozen=True, slots=True)
class Response:
    version: int
    community: bytes
    pdu_type: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[VarBind]


# -- encoding ------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def encode_integer(value: int, tag: int = INTEGER) -> bytes:
    """An INTEGER (or, with ``tag``, an unsigned application type) as a whole TLV."""
    if tag == INTEGER and not -(2**31) <= value < 2**31:
        raise ValueError(f"{value} is out of the Integer32 range")
    if tag in _UNSIGNED and not 0 <= value <= _UNSIGNED[tag][1]:
        raise ValueError(f"{value} is out of range for tag 0x{tag:02x}")
    size = value.bit_length() // 8 + 1  # room for the sign bit
    return _tlv(tag, value.to_bytes(size, "big", signed=True))


def encode_octets(data: bytes, tag: int = OCTET_STRING) -> bytes:
    """An OCTET STRING (or IpAddress, Opaque with ``tag``) as a whole TLV."""
    if tag not in _BYTES_TAGS:
        raise ValueError(f"tag 0x{tag:02x} does not hold bytes")
    return _tlv(tag, data)


def _arcs(oid: str | Sequence[int]) -> tuple[int, ...]:
    try:
        arcs = (
            tuple(int(a) for a in oid.strip(".").split(".")) if isinstance(oid, str) else tuple(oid)
        )
    except ValueError:
        raise ValueError(f"{oid!r} is not a dotted object identifier") from None
    if not 2 <= len(arcs) <= MAX_OID_ARCS:
        raise ValueError(f"{oid!r}: an object identifier has 2 to {MAX_OID_ARCS} arcs")
    if arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or any(not 0 <= a < 2**32 for a in arcs):
        raise ValueError(f"{oid!r} is not a valid object identifier")
    return arcs


def encode_oid(oid: str | Sequence[int]) -> bytes:
    """An OBJECT IDENTIFIER as a whole TLV, from ``"1.3.6.1..."`` or a tuple of arcs."""
    return _tlv(OID, oid_body(oid))


def oid_body(oid: str | Sequence[int]) -> bytes:
    """The content bytes of an OID's encoding: what :attr:`VarBind.oid` holds."""
    arcs = _arcs(oid)
    body = bytearray()
    for arc in (arcs[0] * 40 + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return bytes(body)


def encode_message(
    version: int,
    community: bytes,
    pdu_type: int,
    request_id: int,
    binds: Sequence[tuple[bytes, bytes | None]],
    *,
    non_repeaters: int = 0,
    max_repetitions: int = 0,
) -> bytes:
    """A whole v1 (0) / v2c (1) message. ``binds`` pairs encoded OIDs with encoded values
    (None: NULL, as a GET asks). For GETBULK, ``non_repeaters`` and ``max_repetitions``
    take the places of error-status and error-index."""
    if pdu_type not in _PDU_TYPES:
        raise ValueError(f"unknown PDU type 0x{pdu_type:02x}")
    varbinds = b"".join(_tlv(SEQUENCE, oid + (_NULL if v is None else v)) for oid, v in binds)
    pdu = _tlv(
        pdu_type,
        encode_integer(request_id)
        + encode_integer(non_repeaters)
        + encode_integer(max_repetitions)
        + _tlv(SEQUENCE, varbinds),
    )
    return _tlv(SEQUENCE, encode_integer(version) + _tlv(OCTET_STRING, community) + pdu)


# -- decoding ------------------------------------------------------------------------


def _header(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start, stop) of the TLV at ``pos``, whose value must end by ``end``."""
    if pos + 2 > end:
        raise BerError(f"truncated: a header at byte {pos} runs past the end")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise BerError(f"multi-byte tag at byte {pos}: SNMP uses none")
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if size == 0:
            raise BerError(f"indefinite length at byte {pos - 2}: not allowed in SNMP")
        if size > 4:
            raise BerError(f"a {size}-byte length field at byte {pos - 2}: too large")
        if pos + size > end:
            raise BerError(f"truncated: a length field at byte {pos - 2} runs past the end")
        length = int.from_bytes(buf[pos : pos + size], "big")
        pos += size
    if length > end - pos:
        raise BerError(
            f"length {length} at byte {pos} runs past the end ({end - pos} bytes are left)"
        )
    return tag, pos, pos + length


def _expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = _header(buf, pos, end)
    if got != tag:
        raise BerError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x} at byte {pos}")
    return start, stop


def _int(buf: bytes, start: int, stop: int, tag: int, what: str) -> int:
    size = stop - start
    if tag == INTEGER:
        if not 1 <= size <= 5:
            raise BerError(f"{what}: an INTEGER of {size} bytes at byte {start}")
        value = int.from_bytes(buf[start:stop], "big", signed=True)
        if not -(2**31) <= value < 2**31:
            raise BerError(f"{what}: {value} is out of the Integer32 range")
        return value
    most, top = _UNSIGNED[tag]
    if not 1 <= size <= most:
        raise BerError(f"{what}: a value of tag 0x{tag:02x} of {size} bytes at byte {start}")
    value = int.from_bytes(buf[start:stop], "big")
    if value > top:
        raise BerError(f"{what}: {value} is out of range for tag 0x{tag:02x}")
    return value


def _small_int(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    start, stop = _expect(buf, pos, end, INTEGER, what)
    return _int(buf, start, stop, INTEGER, what), stop


def oid_arcs(raw: bytes) -> tuple[int, ...]:
    """The arcs of an encoded OID's content bytes; BerError if they are malformed."""
    if not raw or raw[-1] & 0x80:
        raise BerError("an object identifier is empty or its last arc is cut off")
    arcs: list[int] = []
    arc = 0
    for i, byte in enumerate(raw):
        if arc == 0 and byte == 0x80:
            raise BerError(f"an object identifier arc starts with a padding byte (at {i})")
        arc = (arc << 7) | (byte & 0x7F)
        if arc >= (2**32 if arcs else 2**32 + 80):
            raise BerError("an object identifier arc is larger than 2^32 - 1")
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    if len(arcs) + 1 > MAX_OID_ARCS:
        raise BerError(f"an object identifier has more than {MAX_OID_ARCS} arcs")
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return (*head, *arcs[1:])


def oid_text(raw: bytes) -> str:
    """``"1.3.6.1..."`` for an OID's content bytes (:attr:`VarBind.oid`, :func:`oid_body`)."""
    return ".".join(map(str, oid_arcs(raw)))


def _value(buf: bytes, tag: int, start: int, stop: int) -> Value:
    if tag in INTEGER_TAGS:
        return _int(buf, start, stop, tag, "a value")
    if tag in _BYTES_TAGS:
        if tag == IPADDRESS and stop - start != 4:
            raise BerError(f"an IpAddress of {stop - start} bytes at byte {start}")
        return bytes(buf[start:stop])
    if tag == NULL or tag in EXCEPTIONS:
        if stop != start:
            raise BerError(f"a NULL or exception value with content at byte {start}")
        return None
    if tag == OID:
        return oid_arcs(bytes(buf[start:stop]))
    raise BerError(f"unknown value tag 0x{tag:02x} at byte {start}")


def _varbinds(buf: bytes, pos: int, end: int) -> list[VarBind]:
    binds: list[VarBind] = []
    while pos < end:  # each turn moves pos on by at least one header
        start, stop = _expect(buf, pos, end, SEQUENCE, "a varbind")
        oid_start, oid_stop = _expect(buf, start, stop, OID, "a varbind's name")
        if oid_stop == oid_start or buf[oid_stop - 1] & 0x80:
            raise BerError(f"a varbind's name at byte {oid_start} is empty or cut off")
        tag, v_start, v_stop = _header(buf, oid_stop, stop)
        if v_stop != stop:
            raise BerError(f"a varbind at byte {pos} has {stop - v_stop} bytes after its value")
        binds.append(
            VarBind(bytes(buf[oid_start:oid_stop]), tag, _value(buf, tag, v_start, v_stop))
        )
        pos = stop
    return binds


def decode_message(data: bytes) -> Response:
    """A whole v1/v2c message; :class:`BerError` if it is malformed or too large."""
    if len(data) > MAX_MESSAGE:
        raise BerError(f"a message of {len(data)} bytes is larger than any UDP datagram")
    start, end = _expect(data, 0, len(data), SEQUENCE, "the message")
    if end != len(data):
        raise BerError(f"{len(data) - end} bytes after the message")
    version, pos = _small_int(data, start, end, "the version")
    if version not in (0, 1):
        raise BerError(f"SNMP version field {version}: only v1 (0) and v2c (1) are read here")
    c_start, pos = _expect(data, pos, end, OCTET_STRING, "the community")
    community = bytes(data[c_start:pos])
    pdu_type, p_start, p_stop = _header(data, pos, end)
    if pdu_type not in _PDU_TYPES:
        raise BerError(f"unknown PDU type 0x{pdu_type:02x}")
    if p_stop != end:
        raise BerError(f"{end - p_stop} bytes after the PDU")
    request_id, pos = _small_int(data, p_start, p_stop, "the request id")
    try:
        status, pos = _small_int(data, pos, p_stop, "the error status")
        index, pos = _small_int(data, pos, p_stop, "the error index")
        v_start, v_stop = _expect(data, pos, p_stop, SEQUENCE, "the varbind list")
        if v_stop != p_stop:
            raise BerError(f"{p_stop - v_stop} bytes after the varbind list")
        binds = _varbinds(data, v_start, v_stop)
    except BerError as exc:
        raise BerError(str(exc), request_id) from None
    return Response(version, community, pdu_type, request_id, status, index, binds)
