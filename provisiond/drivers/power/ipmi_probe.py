"""Find BMCs fast: one asyncio UDP socket, a sessionless probe to every address x port.

The probe is *Get Channel Authentication Capabilities* (IPMI 1.5 framing, no session,
as ipmitool sends before any login) plus an ASF presence ping (RMCP class 6).
A target that answers either is a responder. Packet building and parsing are plain
functions, tested without sockets; :func:`sweep` does the I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from provisiond.errors import BadRequest

_RMCP_IPMI = bytes([0x06, 0x00, 0xFF, 0x07])
_RMCP_ASF = bytes([0x06, 0x00, 0xFF, 0x06])
_ASF_IANA = bytes([0x00, 0x00, 0x11, 0xBE])
_GET_CHANNEL_AUTH_CAPS = 0x38


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def channel_auth_probe(seq: int = 1) -> bytes:
    """A sessionless Get Channel Authentication Capabilities request (channel = current)."""
    header = bytes([0x20, 0x06 << 2])  # rsAddr BMC, netFn App
    body = bytes([0x81, (seq & 0x3F) << 2, _GET_CHANNEL_AUTH_CAPS, 0x8E, 0x04])
    message = header + bytes([_checksum(header)]) + body + bytes([_checksum(body)])
    session = bytes([0x00]) + bytes(4) + bytes(4) + bytes([len(message)])
    return _RMCP_IPMI + session + message


def asf_ping(tag: int = 1) -> bytes:
    return _RMCP_ASF + _ASF_IANA + bytes([0x80, tag & 0xFF, 0x00, 0x00])


@dataclass(frozen=True)
class ProbeReply:
    kind: str  # "ipmi" or "asf"
    ipmi_v2: bool = False


def parse_reply(data: bytes) -> ProbeReply | None:
    """Recognise an answer to either probe; anything else is None."""
    if data[:4] == _RMCP_ASF and data[4:8] == _ASF_IANA and len(data) >= 12:
        return ProbeReply("asf") if data[8] == 0x40 else None
    if data[:4] != _RMCP_IPMI or len(data) < 14:
        return None
    auth_type = data[4]
    offset = 4 + 1 + 4 + 4 + (16 if auth_type not in (0x00, 0x06) else 0)
    if auth_type == 0x06:  # RMCP+ framing: payload type, session id, seq, 2-byte length
        return ProbeReply("ipmi", ipmi_v2=True)
    length = data[offset]
    message = data[offset + 1 : offset + 1 + length]
    if len(message) < 8 or message[5] != _GET_CHANNEL_AUTH_CAPS:
        return None
    completion = message[6]
    if completion != 0x00:
        return ProbeReply("ipmi")  # it answered, even if it dislikes the request
    caps = message[7:]
    ipmi_v2 = len(caps) >= 4 and bool(caps[1] & 0x80) and bool(caps[3] & 0x02)
    return ProbeReply("ipmi", ipmi_v2=ipmi_v2)


def parse_ports(spec: str) -> list[int]:
    """``623``, ``623,664`` or ``16000-16999`` -> ports; bad input -> BadRequest with a hint."""
    ports: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if not 1 <= first <= last <= 65535:
                raise ValueError
            ports.update(range(first, last + 1))
    except ValueError:
        raise BadRequest(
            f"bad port list {spec!r}", hint="use e.g. 623, or 623,664, or 16000-16999"
        ) from None
    return sorted(ports)


def expand_targets(networks: Iterable[str], ports: list[int], limit: int) -> list[tuple[str, int]]:
    """Every address x port of the networks, refusing sweeps larger than ``limit``."""
    targets: list[tuple[str, int]] = []
    for spec in networks:
        try:
            net = ipaddress.ip_network(spec.strip(), strict=False)
        except ValueError:
            raise BadRequest(
                f"bad network {spec!r}", hint="use CIDR notation, e.g. 10.1.0.0/22 or 127.0.0.1/32"
            ) from None
        if net.version != 4:
            raise BadRequest("IPv6 BMC sweeps are not supported", hint="sweep an IPv4 network")
        # Count before listing: a /8 has 16M hosts, too many to build only to refuse.
        host_count = net.num_addresses if net.num_addresses <= 2 else net.num_addresses - 2
        if host_count * len(ports) + len(targets) > limit:
            raise BadRequest(
                f"the sweep would probe more than {limit} address x port pairs",
                hint="split the network, or narrow --ports",
            )
        hosts = [net.network_address] if net.num_addresses == 1 else list(net.hosts())
        targets += [(str(host), port) for host in hosts for port in ports]
    return targets


class _Collector(asyncio.DatagramProtocol):
    def __init__(
        self,
        wanted: set[tuple[str, int]],
        on_reply: Callable[[tuple[str, int]], None] | None = None,
    ) -> None:
        self.replies: dict[tuple[str, int], ProbeReply] = {}
        self.changed = asyncio.Event()
        self.wanted = wanted
        self.on_reply = on_reply

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = parse_reply(data)
        if reply is None:
            return
        key = (str(addr[0]), int(addr[1]))
        known = self.replies.get(key)
        if known is None or (reply.kind == "ipmi" and known.kind != "ipmi"):
            self.replies[key] = reply
        if known is None and self.on_reply is not None and key in self.wanted:
            self.on_reply(key)
        self.changed.set()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port-unreachable from empty targets: simply no responder


async def sweep(
    targets: list[tuple[str, int]],
    *,
    timeout: float = 1.0,  # noqa: ASYNC109  (a per-round wait, not a cancel scope)
    rounds: int = 2,
    batch: int = 256,
    on_reply: Callable[[tuple[str, int]], None] | None = None,
) -> dict[tuple[str, int], ProbeReply]:
    """Probe every target ``rounds`` times (UDP loses packets); wait ``timeout`` after each.

    ``on_reply`` is called (on the event loop) with each responder as its first reply
    arrives, so a caller can start on it while the sweep still waits for the others.
    """
    loop = asyncio.get_running_loop()
    wanted = set(targets)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("0.0.0.0", 0))  # noqa: S104  (a client socket; replies come from the targets)
    transport, collector = await loop.create_datagram_endpoint(
        lambda: _Collector(wanted, on_reply), sock=sock
    )
    ipmi_probe, ping = channel_auth_probe(), asf_ping()
    try:
        for _ in range(rounds):
            pending = [t for t in targets if t not in collector.replies]
            if not pending:
                break
            for i in range(0, len(pending), batch):
                for target in pending[i : i + batch]:
                    transport.sendto(ipmi_probe, target)
                    transport.sendto(ping, target)
                await asyncio.sleep(0)  # let replies in between batches
            deadline = time.monotonic() + timeout
            while len(collector.replies) < len(targets):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                collector.changed.clear()
                try:
                    await asyncio.wait_for(collector.changed.wait(), left)
                except TimeoutError:
                    break
    finally:
        transport.close()
    return {k: v for k, v in collector.replies.items() if k in wanted}
