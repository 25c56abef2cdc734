"""SNMPv2c GET and SET without pysnmp: the :mod:`~provisiond.drivers.pdu.ber` codec over
one asyncio UDP socket (per address family) shared by every PDU of a poll.

A request is matched to its answer by request id, source address and community;
anything else arriving on the socket is dropped. Each try waits ``PduTarget.timeout``
and a silent agent is asked again, with the same datagram, ``PduTarget.retries``
times, so a late answer to the first try still counts. What an operator sees is
what :mod:`~provisiond.drivers.pdu.snmp` promises for every SNMP version:

- no answer: :class:`PduUnreachable` (retryable); a v2c agent drops a community it
  does not know, so the hint names the community;
- error-status tooBig: the objects are split in halves and asked again; any other
  error-status, or a SET refused: :class:`PduUnsupported` naming the object;
- a malformed answer, or one that answers other objects: :class:`PduBadReply`.

A GET asks at most :data:`MAX_OBJECTS` objects per request (answers of about 1.2 kB
for the APC objects, within one Ethernet frame) and a PDU's requests go one after
the other, as ``snmpget`` does; concurrency comes from asking many PDUs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from provisiond.drivers.pdu import ber
from provisiond.drivers.pdu.base import (
    PduBadReply,
    PduTarget,
    PduUnreachable,
    PduUnsupported,
)

__all__ = ["MAX_OBJECTS", "NO_ANSWER_HINT", "V2cClient"]

log = logging.getLogger(__name__)

MAX_OBJECTS = 50
_RCVBUF = 1 << 20
#: error-status names, RFC 3416.
_ERROR_STATUS = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)
TOO_BIG = 1
NO_ANSWER_HINT = (
    "no answer: wrong community or address? An SNMPv2c agent does not answer a "
    "community it does not know; also check the address, snmp_port and that SNMP is "
    "enabled on the PDU"
)


@lru_cache(maxsize=8192)
def _oid(text: str) -> tuple[bytes, bytes]:
    """(whole TLV, content bytes) of an OID; the poll asks the same ones every time."""
    body = ber.oid_body(text)
    return ber.encode_oid(text), body


@dataclass
class _Pending:
    peer: tuple[str, int]
    community: bytes
    future: asyncio.Future[ber.Response]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, pending: dict[int, _Pending]) -> None:
        self.pending = pending

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            answer = ber.decode_message(data)
        except ber.BerError as exc:
            waiting = self.pending.get(exc.request_id) if exc.request_id is not None else None
            if (
                waiting is not None
                and waiting.peer == tuple(addr[:2])
                and not waiting.future.done()
            ):
                waiting.future.set_exception(PduBadReply(f"a malformed SNMP answer: {exc}"))
            else:
                log.debug("snmp: dropped a malformed datagram from %s: %s", addr[0], exc)
            return
        waiting = self.pending.get(answer.request_id)
        if (
            waiting is None
            or waiting.peer != tuple(addr[:2])
            or answer.community != waiting.community
            or answer.version != 1
            or answer.pdu_type != ber.RESPONSE
            or waiting.future.done()
        ):
            log.debug("snmp: dropped an unexpected datagram from %s", addr[0])
            return
        waiting.future.set_result(answer)

    def error_received(self, exc: Exception) -> None:
        # An ICMP port unreachable: the answer will not come; the timeout says so.
        log.debug("snmp: socket error %s", exc)


class V2cClient:
    """SNMPv2c requests to any number of agents over one socket per address family."""

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._sockets: dict[int, asyncio.DatagramTransport] = {}
        self._opening = asyncio.Lock()
        self._peers: dict[tuple[str, int], tuple[int, tuple[str, int]]] = {}
        self._ids = itertools.count(random.randrange(1, 2**30))  # noqa: S311  (not a secret)

    def close(self) -> None:
        for transport in self._sockets.values():
            transport.close()
        self._sockets.clear()
        for waiting in self._pending.values():
            waiting.future.cancel()

    async def get(self, target: PduTarget, oids: Sequence[str]) -> list[int | None]:
        """Integer values of ``oids``; None for an object the PDU does not have (or not an
        integer). Many objects are asked in requests of at most :data:`MAX_OBJECTS`."""
        binds = [_oid(o) for o in oids]
        count = -(-len(binds) // MAX_OBJECTS)
        size = -(-len(binds) // count) if count else 0
        values: list[int | None] = []
        for start in range(0, len(binds), size or 1):
            values += await self._get(target, binds[start : start + size])
        return values

    async def _get(self, target: PduTarget, binds: list[tuple[bytes, bytes]]) -> list[int | None]:
        answer = await self._request(target, ber.GET, [(tlv, None) for tlv, _ in binds], "read")
        if answer.error_status == TOO_BIG and len(binds) > 1:
            half = len(binds) // 2
            return await self._get(target, binds[:half]) + await self._get(target, binds[half:])
        if answer.error_status:
            raise _refused(target, answer, [body for _, body in binds], "read")
        if [vb.oid for vb in answer.varbinds] != [body for _, body in binds]:
            raise PduBadReply(
                f"PDU {target.name} ({target.endpoint}) answered a GET of {len(binds)} objects "
                f"with {len(answer.varbinds)} other or reordered objects",
                hint="the PDU's SNMP agent is faulty, or something else answers on that port",
            )
        # Only the integer types decode to an int (bytes, OIDs and exceptions do not).
        return [vb.value if isinstance(vb.value, int) else None for vb in answer.varbinds]

    async def set(self, target: PduTarget, oid: str, value: int) -> None:
        tlv, body = _oid(oid)
        answer = await self._request(target, ber.SET, [(tlv, ber.encode_integer(value))], "switch")
        if answer.error_status:
            raise _refused(target, answer, [body], "switch")

    async def _request(
        self,
        target: PduTarget,
        pdu_type: int,
        binds: list[tuple[bytes, bytes | None]],
        doing: str,
    ) -> ber.Response:
        family, peer = await self._peer(target)
        transport = await self._socket(family)
        request_id = next(self._ids) % (2**31 - 1) + 1
        community = target.community.encode()
        message = ber.encode_message(1, community, pdu_type, request_id, binds)
        future: asyncio.Future[ber.Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(peer, community, future)
        tries = 1 + max(0, target.retries)
        try:
            for _ in range(tries):
                transport.sendto(message, peer)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), target.timeout)
                except TimeoutError:
                    continue
        except PduBadReply as exc:
            raise PduBadReply(
                f"PDU {target.name} ({target.endpoint}) sent {exc.message}",
                hint="the PDU's SNMP agent is faulty, or something else answers on that port",
            ) from None
        finally:
            del self._pending[request_id]
            future.cancel()
        raise PduUnreachable(
            f"PDU {target.name} ({target.endpoint}) did not answer an SNMP {doing} request "
            f"within {target.timeout:g}s ({tries} tries, SNMPv2c)",
            hint=NO_ANSWER_HINT,
        )

    async def _peer(self, target: PduTarget) -> tuple[int, tuple[str, int]]:
        key = (target.address, target.port)
        known = self._peers.get(key)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(target.address)
            family = int(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
            found = (family, (str(ip), target.port))
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    target.address, target.port, type=socket.SOCK_DGRAM
                )
            except OSError as exc:
                raise PduUnreachable(
                    f"PDU {target.name}: cannot resolve {target.address!r}: {exc}",
                    hint="check the PDU's mgmt_address (or use an IP address)",
                ) from None
            family, _, _, _, sockaddr = infos[0]
            found = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        self._peers[key] = found
        return found

    async def _socket(self, family: int) -> asyncio.DatagramTransport:
        transport = self._sockets.get(family)
        if transport is not None and not transport.is_closing():
            return transport
        async with self._opening:  # the first requests of a poll all arrive at once
            return await self._open(family)

    async def _open(self, family: int) -> asyncio.DatagramTransport:
        transport = self._sockets.get(family)
        if transport is None or transport.is_closing():
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self._pending), family=family
            )
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):  # answers of many PDUs may arrive at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            self._sockets[family] = transport
        return transport


def _refused(
    target: PduTarget, answer: ber.Response, oids: list[bytes], doing: str
) -> PduUnsupported:
    status = answer.error_status
    name = _ERROR_STATUS[status] if 0 <= status < len(_ERROR_STATUS) else f"error {status}"
    index = answer.error_index
    at = ber.oid_text(oids[index - 1]) if 0 < index <= len(oids) else "the request"
    return PduUnsupported(
        f"PDU {target.name} ({target.endpoint}) refused to {doing}: {name} at {at}",
        hint="the PDU does not have that outlet or object, or the SNMP user "
        "or community has read-only access (give it write access)",
    )
