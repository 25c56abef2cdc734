"""Listening sockets inside a network namespace, for the boot HTTP routes.

Machines on a provisioning network that lives in a namespace (the virtual rack, or
a site that isolates its PXE VLAN that way) must reach the daemon at the network's
``boot_address``. A socket belongs to the namespace it was created in, so a
short-lived thread joins the namespace (``setns(2)`` affects only the calling
thread), creates and binds the socket, and ends; the daemon's own threads never
leave the host namespace, and uvicorn serves the socket like any other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from pathlib import Path

from provisiond.errors import ConfigError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open on ``fd``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def bind_in_netns(netns: str | None, host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` inside ``netns``."""
    if netns is None:
        return _bind(host, port, backlog)
    path = NETNS_DIR / netns
    if not path.exists():
        raise ConfigError(
            f"network namespace {netns!r} does not exist",
            hint=f"create it (ip netns add {netns}) or bring the virtual rack up "
            "(provisiond rack up) before starting the daemon",
        )
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
            result.append(_bind(host, port, backlog))
        except BaseException as exc:  # handed back to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=work, name=f"netns-bind-{netns}", daemon=True)
    thread.start()
    thread.join(10.0)
    if not result:
        raise ConfigError(f"binding in namespace {netns!r} timed out", hint="check the host")
    outcome = result[0]
    if isinstance(outcome, ConfigError):
        raise outcome
    if isinstance(outcome, BaseException):
        raise ConfigError(
            f"cannot listen on {host}:{port} in namespace {netns!r}: {outcome}",
            hint="the daemon needs root (CAP_SYS_ADMIN) to join a namespace, and the "
            "address must be on an interface inside it",
        ) from outcome
    return outcome


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="another process holds the port, or the address is not on any interface; "
            "stop it or set listen_port / the network's http_port",
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def connect_in_netns(netns: str | None, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection made from inside ``netns`` (SSH to a machine on that network).

    Machines on a namespaced provisioning network are reachable only from inside it;
    connecting from the host would send the packets to the host's default route.
    """
    if netns is None:
        return socket.create_connection(address, timeout=timeout)
    path = NETNS_DIR / netns
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
            result.append(socket.create_connection(address, timeout=timeout))
        except BaseException as exc:  # handed back to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=work, name=f"netns-connect-{netns}", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if not result:
        raise TimeoutError(f"connect to {address[0]}:{address[1]} in {netns} timed out")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
