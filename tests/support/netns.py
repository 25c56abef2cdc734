"""Test-created network namespaces: bridges, veth pairs, DHCP clients, all torn down.

Everything lives in namespaces named ``pvd-t-<random>-<role>`` that this module
created; links are created inside those namespaces (``ip -n``), never on the
host. :class:`Lab` deletes only its own namespaces and kills only the PIDs it
started, in ``close()``, which fixtures call from a finalizer.

    with Lab() as lab:
        server, client = lab.pair(client_mac="52:54:00:aa:00:01")
        ...

Tools: ``ip`` (iproute2), ``busybox`` (busybox-static, for udhcpc), ``dnsmasq``
(dnsmasq-base). :func:`require` fails under CI=true and skips locally when one is
missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

SUBNET = "10.77.1"
V6_PREFIX = "fd77:1::"
UDHCPC_TIMEOUT_S = 15


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if not missing:
        return
    message = f"missing for network-namespace tests: {', '.join(missing)}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; apt-get install iproute2 dnsmasq-base busybox-static ipxe")
    pytest.skip(message)


def _run(*cmd: str, timeout: float = 10) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Lab:
    """Namespaces and processes one test created; ``close()`` removes exactly those."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pvd-netns-")))

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # -- building blocks -------------------------------------------------------------

    def netns(self, role: str) -> str:
        name = f"pvd-t-{self.tag}-{role}"
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def bridge(
        self, ns: str, name: str = "br0", v4: str | None = None, v6: str | None = None
    ) -> None:
        _run("ip", "-n", ns, "link", "add", name, "type", "bridge", "forward_delay", "0")
        _run("ip", "-n", ns, "link", "set", name, "up")
        if v4:
            _run("ip", "-n", ns, "addr", "add", v4, "dev", name)
        if v6:
            _run("ip", "-n", ns, "addr", "add", v6, "dev", name, "nodad")

    def veth(
        self, ns: str, ifname: str, peer_ns: str, peer: str, *, mac: str | None = None
    ) -> None:
        """A veth pair created inside ``ns`` with its peer moved into ``peer_ns``."""
        _run("ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer,
             "netns", peer_ns)  # fmt: skip
        if mac:
            _run("ip", "-n", ns, "link", "set", ifname, "address", mac)
        _run("ip", "-n", ns, "link", "set", ifname, "up")
        _run("ip", "-n", peer_ns, "link", "set", peer, "up")

    def enslave(self, ns: str, ifname: str, bridge: str = "br0") -> None:
        _run("ip", "-n", ns, "link", "set", ifname, "master", bridge)

    # -- layouts ---------------------------------------------------------------------

    def pair(self, client_mac: str | None = None, ipv6: bool = False) -> tuple[str, str]:
        """Server namespace with ``br0`` (SUBNET.1/24), client namespace with ``c0``."""
        server, client = self.netns("srv"), self.netns("cli")
        self.bridge(server, v4=f"{SUBNET}.1/24", v6=f"{V6_PREFIX}1/64" if ipv6 else None)
        self.veth(client, "c0", server, "v0", mac=client_mac)
        self.enslave(server, "v0")
        return server, client

    def proxy_layout(self, client_mac: str | None = None) -> tuple[str, str, str]:
        """An L2-only namespace with ``br0``; site DHCP (SUBNET.2), ours (SUBNET.1) and a
        client each in their own namespace on a veth to it (DESIGN.md, proxyDHCP)."""
        l2 = self.netns("l2")
        self.bridge(l2)
        site, ours, client = self.netns("site"), self.netns("prx"), self.netns("cli")
        for ns, ifname, peer in ((site, "e0", "p-site"), (ours, "e0", "p-prx")):
            self.veth(ns, ifname, l2, peer)
            self.enslave(l2, peer)
        _run("ip", "-n", site, "addr", "add", f"{SUBNET}.2/24", "dev", "e0")
        _run("ip", "-n", ours, "addr", "add", f"{SUBNET}.1/24", "dev", "e0")
        self.veth(client, "c0", l2, "p-cli", mac=client_mac)
        self.enslave(l2, "p-cli")
        return site, ours, client

    # -- processes -------------------------------------------------------------------

    def spawn(self, ns: str, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT
            )
        self.pids.append(proc.pid)
        return proc

    def udhcpc(
        self,
        ns: str,
        ifname: str = "c0",
        *,
        vendor_class: str | None = None,
        options: tuple[str, ...] = (),
        tries: int = 3,
    ) -> dict[str, str]:
        """Run busybox udhcpc once (bounded by ``timeout``); return the ``bound`` env."""
        out = self.tmp / f"udhcpc-{secrets.token_hex(3)}"
        out.mkdir()
        script = out / "script.sh"
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > "{out}/bound.env"\nexit 0\n')
        script.chmod(0o755)
        cmd = ["timeout", str(UDHCPC_TIMEOUT_S), "ip", "netns", "exec", ns,
               "busybox", "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", str(tries),
               "-T", "1", "-s", str(script), "-O", "bootfile"]  # fmt: skip
        if vendor_class:
            cmd += ["-V", vendor_class]
        for opt in options:
            cmd += ["-x", opt]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=UDHCPC_TIMEOUT_S + 5)
        env_file = out / "bound.env"
        if not env_file.exists():
            raise AssertionError(f"udhcpc got no lease: rc={proc.returncode} {proc.stderr}")
        env = {}
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        return env

    def dhcp_probe(
        self, ns: str, ifname: str, mac: str, *, ipxe: bool, wait_s: float = 3.0
    ) -> list[dict[str, str]]:
        """Broadcast one PXE DHCPDISCOVER and list every offer seen within ``wait_s``."""
        cmd = ["timeout", str(int(wait_s) + 10), "ip", "netns", "exec", ns, sys.executable,
               __file__, "probe", ifname, mac, "1" if ipxe else "0", str(wait_s)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=wait_s + 15)
        if proc.returncode != 0:
            raise AssertionError(f"probe failed: {proc.stderr}")
        result: list[dict[str, str]] = json.loads(proc.stdout)
        return result

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- a one-shot DHCP probe: a test-side *client*, run inside the client namespace ----------


def _probe(ifname: str, mac: str, ipxe: bool, wait_s: float) -> list[dict[str, str]]:
    import socket
    import struct

    xid = secrets.randbits(32)
    hw = bytes.fromhex(mac.replace(":", ""))
    opts = bytes([53, 1, 1])  # DHCPDISCOVER
    opts += bytes([60, 20]) + b"PXEClient:Arch:00000"
    opts += bytes([93, 2, 0, 0])  # client arch x86 BIOS
    opts += bytes([97, 17, 0]) + bytes(16)  # client machine id (PXE)
    if ipxe:
        opts += bytes([77, 4]) + b"iPXE" + bytes([175, 3, 0x13, 1, 1])
    opts += bytes([55, 4, 1, 3, 66, 67, 255])
    packet = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 0, xid, 0, 0x8000,
                         bytes(4), bytes(4), bytes(4), bytes(4), hw.ljust(16, b"\0"),
                         bytes(64), bytes(128), b"\x63\x82\x53\x63") + opts  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    sock.bind(("0.0.0.0", 68))  # noqa: S104  (bound to the client netns interface)
    sock.sendto(packet, ("255.255.255.255", 67))
    offers: list[dict[str, str]] = []
    deadline = time.monotonic() + wait_s
    while len(offers) < 16:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data, _addr = sock.recvfrom(4096)
        except TimeoutError:
            break
        if len(data) < 240 or struct.unpack("!I", data[4:8])[0] != xid:
            continue
        found: dict[str, str] = {
            "yiaddr": socket.inet_ntoa(data[16:20]),
            "siaddr": socket.inet_ntoa(data[20:24]),
            "file": data[108:236].split(b"\0", 1)[0].decode(errors="replace"),
        }
        i = 240
        while i < len(data) and data[i] != 255:
            if data[i] == 0:
                i += 1
                continue
            code, length = data[i], data[i + 1]
            value = data[i + 2 : i + 2 + length]
            if code == 54:
                found["serverid"] = socket.inet_ntoa(value)
            elif code == 53:
                found["type"] = str(value[0])
            elif code == 60:
                found["vendor_class"] = value.decode(errors="replace")
            elif code == 43:
                found["pxe_options"] = value.hex()
            i += 2 + length
        offers.append(found)
    sock.close()
    return offers


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "probe":
    print(json.dumps(_probe(sys.argv[2], sys.argv[3], sys.argv[4] == "1", float(sys.argv[5]))))
