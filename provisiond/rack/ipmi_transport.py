"""UDP plumbing for the BMC farm: loopback checks, port ranges, one endpoint per BMC."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import resource
import socket
from collections.abc import Callable
from typing import TypeVar

from provisiond.rack.ipmi_bmc import SimBmc
from provisiond.rack.ipmi_session import Address

__all__ = ["Endpoint", "bind_range", "check_loopback", "raise_fd_limit", "sender"]

_AUTO_PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range, so clients rarely collide
_AUTO_PORT_TRIES = 32


def check_loopback(address: str) -> str:
    """Return ``address`` if it is an IPv4 loopback address, else raise ValueError.

    Simulated BMCs answer anyone who can reach them with the default password, so they
    only ever listen on 127.0.0.0/8.
    """
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4 address; use one in 127.0.0.0/8") from None
    if not parsed.is_loopback:
        raise ValueError(
            f"{address} is not a loopback address: simulated BMCs listen only on 127.0.0.0/8"
        )
    return address


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self, bmc_ref: list[SimBmc]) -> None:
        self._bmc_ref = bmc_ref

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._bmc_ref[0].datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a client that went away; UDP has no session to fail


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def bind_range(address: str, base_port: int, count: int) -> tuple[int, list[socket.socket]]:
    """Bind ``count`` consecutive UDP ports; base_port 0 picks a free range."""
    if base_port:
        candidates = [base_port]
    else:
        low, high = _AUTO_PORT_RANGE
        rng = random.Random()  # noqa: S311 - spreading port picks, not secrets
        candidates = [
            rng.randrange(low, max(low + 1, high - count)) for _ in range(_AUTO_PORT_TRIES)
        ]
    last_error: OSError | None = None
    for base in candidates:
        if base + count - 1 > 65535:
            raise ValueError(f"ports {base}-{base + count - 1} go past 65535")
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((address, port))
                sock.setblocking(False)
            return base, sockets
        except OSError as exc:
            for sock in sockets:
                sock.close()
            last_error = exc
            if base_port:
                raise OSError(
                    exc.errno, f"cannot bind {address}:{base + len(sockets) - 1}: {exc.strerror}"
                ) from exc
    raise OSError(f"no free range of {count} UDP ports on {address}: {last_error}")


def sender(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.DatagramTransport,
    bmc_ref: list[SimBmc],
    latency_ms: float,
) -> Callable[[bytes, Address], None]:
    def send_now(packet: bytes, client: Address) -> None:
        if not transport.is_closing():
            transport.sendto(packet, client)

    def send(packet: bytes, client: Address) -> None:
        delay = bmc_ref[0].reply_delay_s(latency_ms)
        if delay > 0:
            loop.call_later(delay, send_now, packet, client)
        else:
            send_now(packet, client)

    return send


T = TypeVar("T")


def call_on_loop(
    loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T], what: str, timeout: float
) -> T:
    """Run ``fn`` on a simulator's event loop (from another thread) and return its result;
    ``what`` names the simulator when it is not running."""
    if loop is None:
        raise RuntimeError(f"{what} is not running")

    async def run() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)
