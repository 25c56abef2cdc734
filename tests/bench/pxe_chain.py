"""The bare PXE chain the boot benchmarks measure provisiond against, and the guest driver.

A bare chain is what an admin would set up without provisiond, in the same kind of
network as the daemon's: :func:`provisiond.rack.vrack.up` makes namespace
``pvd-<name>`` with bridge ``br0`` (v4 ``.1`` and v6 ``::1``, DAD off) and one tap per
guest (its BMC farm idles: the chain never uses it). Inside that namespace run

- a plain dnsmasq (DHCP only) with the options the daemon renders from
  ``pxe/dnsmasq.conf.j2`` that change boot time: ``no-ping``, ``dhcp-match`` on
  option 175 with ``dhcp-boot`` of an HTTP script URL, ``encap:175,176,1``, and RA
  for the v6 prefix; one ``dhcp-hostsdir`` file per guest (MAC, fixed address,
  name), as the daemon writes;
- this file run as ``serve``: ``http.server``'s ``SimpleHTTPRequestHandler`` (what
  ``python3 -m http.server`` runs) on a ``ThreadingHTTPServer``, serving a static iPXE
  script, the guest kernel and initrd and a static NoCloud ``user-data``, plus a
  ``do_POST`` for the phone_home callback (``http.server`` alone answers POST with
  501). Each request's arrival (time, client address, method, path) is one JSON
  line, so a bare boot splits into the daemon's phase names (:data:`PHASES`).

The static script boots the same kernel line as the daemon's deploy template
(``initrd=``, the image's kernel args, ``ds=nocloud-net;s=<seed>``), in one script
where the daemon chains ``/boot/ipxe`` to a per-MAC one.

:func:`boot_to_callback` is the guest driver both benchmarks use for either chain:
it starts each guest's QEMU with :class:`~provisiond.rack.qemu.QemuBackend`'s own
command line (``-boot n``), notes the wall-clock time of each start, polls a
caller-given source of callback times, and powers each guest off (SIGKILL by PID) as
soon as its callback is seen, so a guest that is done costs the others no CPU.
Every wait is bounded; every process is stopped by PID.

    chain = BareChain("bpxe-bare", 4, workdir, image)
    chain.up()
    try:
        phases = chain.boot(chain.guests[:4])   # {"vm1": {"kernel": 2.1, ...,
                                                #          "os_callback": 9.8}, ...}
    finally:
        chain.down()
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from provisiond.rack import vrack  # noqa: E402
from provisiond.rack.guest_image import GuestImage  # noqa: E402
from provisiond.rack.ipmi_machine import BootDevice  # noqa: E402
from provisiond.rack.qemu import QemuBackend  # noqa: E402
from tests.support.procs import stop as stop_proc  # noqa: E402

PXE = BootDevice("pxe")
BOOT_DEADLINE_S = 180.0
POLL_S = 0.25
READY_S = 15.0
HTTP_PORT = 8080
#: (method, path) on the bare server -> the daemon's name for the same boot phase.
PHASES = {
    ("GET", "/boot.ipxe"): "ipxe_script",
    ("GET", "/vmlinuz"): "kernel",
    ("GET", "/initrd.img"): "initrd",
    ("GET", "/seed/user-data"): "seed",
    ("POST", "/callback"): "os_callback",
}
#: The daemon's user-data shape (pxe/os/default/user-data.j2), with one static key.
USER_DATA = """\
#cloud-config
hostname: {hostname}
ssh_authorized_keys:
  - "{key}"
phone_home:
  url: "{url}"
  post: [pub_key_ed25519, pub_key_ecdsa, pub_key_rsa, instance_id, hostname]
  tries: 30
"""


class ChainError(RuntimeError):
    pass


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def median_max(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def public_key() -> str:
    """A fresh Ed25519 public key for the seed; the guest installs it, nobody logs in."""
    raw = Ed25519PrivateKey.generate().public_key()
    return raw.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " bench"


def serial_tail(guest: vrack.GuestState, chars: int = 800) -> str:
    path = Path(guest.serial_log)
    text = path.read_text(errors="replace")[-chars:] if path.exists() else "(no serial log)"
    return f"--- {guest.name} serial log tail:\n{text}"


@dataclass(frozen=True)
class Boot:
    """One guest's boot: wall-clock (``time.time()``) QEMU start and callback."""

    started: float
    callback: float

    @property
    def seconds(self) -> float:
        return self.callback - self.started


def boot_to_callback(
    netns: str,
    accel: str,
    guests: Sequence[vrack.GuestState],
    callbacks: Callable[[], dict[str, float]],
    *,
    deadline_s: float = BOOT_DEADLINE_S,
) -> dict[str, Boot]:
    """Start every guest (``-boot n``) at once and wait for each one's callback.

    ``callbacks()`` returns guest name -> wall-clock time of its callback; times
    before this round's start of that guest are ignored. Each guest is killed as
    soon as its callback shows; all are killed on the way out.
    """
    backends = {g.name: QemuBackend(g.qemu_guest(), netns, accel) for g in guests}
    started: dict[str, float] = {}
    done: dict[str, Boot] = {}
    try:
        for guest in guests:
            started[guest.name] = time.time()
            backends[guest.name].power_on(PXE)
        limit = time.monotonic() + deadline_s
        while len(done) < len(guests):
            for name, at in callbacks().items():
                if name in started and name not in done and at >= started[name]:
                    done[name] = Boot(started[name], at)
                    backends[name].power_off()
            missing = [g for g in guests if g.name not in done]
            dead = [g for g in missing if not backends[g.name].is_on()]
            if dead or (missing and time.monotonic() > limit):
                why = "QEMU exited" if dead else f"no callback in {deadline_s:.0f}s"
                tails = "\n".join(serial_tail(g) for g in dead or missing)
                raise ChainError(f"{why}: {', '.join(g.name for g in dead or missing)}\n{tails}")
            if missing:
                time.sleep(POLL_S)
    finally:
        for backend in backends.values():
            backend.power_off()
    return done


@dataclass
class BareChain:
    """dnsmasq + the static HTTP server in their own rack namespace (see the module doc)."""

    name: str
    count: int
    workdir: Path
    image: GuestImage
    subnet: str = "10.218.0.0/24"
    ipv6_prefix: str = "fd00:218::/64"
    ram_mib: int = 384
    rack: vrack.RackState | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The script run as ``<script> serve`` for the HTTP server (a subclass's own module).
    server_script: ClassVar[str] = __file__

    @property
    def guests(self) -> list[vrack.GuestState]:
        return self.rack.guests if self.rack else []

    @property
    def base_url(self) -> str:
        assert self.rack is not None
        return f"http://{self.rack.boot_address}:{HTTP_PORT}"

    @property
    def record_file(self) -> Path:
        return self.workdir / "callbacks.jsonl"

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rack = vrack.up(
            self.count,
            name=self.name,
            state_dir=self.workdir / "rack",
            subnet=self.subnet,
            ipv6_prefix=self.ipv6_prefix,
            ram_mib=self.ram_mib,
            http_port=HTTP_PORT,
        )
        self._write_www()
        self._start_dnsmasq()
        self._start_http()

    def _write_www(self) -> None:
        www = self.workdir / "www"
        (www / "seed").mkdir(parents=True, exist_ok=True)
        for src, dst in ((self.image.kernel, "vmlinuz"), (self.image.initrd, "initrd.img")):
            target = www / dst
            target.unlink(missing_ok=True)
            try:
                os.link(src, target)
            except OSError:  # another file system: copy
                target.write_bytes(src.read_bytes())
        base = self.base_url
        (www / "boot.ipxe").write_text(
            "#!ipxe\n"
            f"kernel {base}/vmlinuz initrd=initrd.img {self.image.kernel_args} "
            f"ds=nocloud-net;s={base}/seed/\n"
            f"initrd {base}/initrd.img\n"
            "boot\n"
        )
        (www / "seed" / "user-data").write_text(
            USER_DATA.format(hostname="bare", key=public_key(), url=f"{base}/callback")
        )
        (www / "seed" / "meta-data").write_text("instance-id: bare\n")

    def _start_dnsmasq(self) -> None:
        assert self.rack is not None
        rack = self.rack
        hosts = self.workdir / "hosts"
        hosts.mkdir(exist_ok=True)
        for guest in rack.guests:
            (hosts / guest.name).write_text(f"{guest.mac},{guest.ip},{guest.name}\n")
        net = ipaddress.IPv4Network(rack.subnet)
        v6 = ipaddress.IPv6Network(rack.ipv6_prefix)
        log = self.workdir / "dnsmasq.log"
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(
            "port=0\nbind-interfaces\n"
            f"interface={rack.bridge}\nexcept-interface=lo\nuser=root\n"
            f"log-facility={log}\nlog-dhcp\npid-file=\n"
            f"dhcp-leasefile={self.workdir / 'leases'}\ndhcp-hostsdir={hosts}\n"
            "dhcp-authoritative\n"
            f"dhcp-range={net.network_address + 100},{net.network_address + 200},"
            f"{net.netmask},3600s\n"
            "no-ping\n"
            "dhcp-match=set:ipxe,175\ndhcp-userclass=set:ipxe,iPXE\n"
            "dhcp-option=encap:175,176,1\n"
            f"dhcp-boot=tag:ipxe,{self.base_url}/boot.ipxe\n"
            f"enable-ra\ndhcp-range={v6.network_address},ra-only,{v6.prefixlen}\n"
        )
        proc = self._spawn("dnsmasq", "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}")
        self._wait(proc, lambda: log.exists() and "DHCP, IP range" in log.read_text(), "dnsmasq")

    def _start_http(self) -> None:
        assert self.rack is not None
        ready = self.workdir / "http.ready"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            "http", sys.executable, self.server_script, "serve",
            "--root", str(self.workdir / "www"),
            "--bind", self.rack.boot_address, "--port", str(HTTP_PORT),
            "--record", str(self.record_file), "--ready", str(ready),
        )  # fmt: skip
        self._wait(proc, ready.exists, "http")

    def _spawn(self, what: str, *cmd: str) -> subprocess.Popen[bytes]:
        """``cmd`` inside the namespace, its stderr in ``<what>.stderr``; tracked for down()."""
        assert self.rack is not None
        with (self.workdir / f"{what}.stderr").open("ab") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.rack.netns, *cmd],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def _wait(self, proc: subprocess.Popen[bytes], ok: Callable[[], bool], what: str) -> None:
        limit = time.monotonic() + READY_S
        while time.monotonic() < limit:
            if proc.poll() is not None:
                err = (self.workdir / f"{what}.stderr").read_text(errors="replace")
                raise ChainError(f"{what} exited with {proc.returncode}: {err.strip()[-1500:]}")
            if ok():
                return
            time.sleep(0.05)
        raise ChainError(f"{what} not ready in {READY_S:.0f}s")

    def requests(self) -> list[tuple[str, str, float]]:
        """(guest, phase, time) of every recorded request, by the guest's fixed address."""
        by_ip = {g.ip: g.name for g in self.guests}
        rows: list[tuple[str, str, float]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.record_file.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    row = json.loads(line)
                    phase = PHASES.get((row["method"], row["path"]))
                    if row["client"] in by_ip and phase:
                        rows.append((by_ip[row["client"]], phase, float(row["at"])))
        return rows

    def callbacks(self) -> dict[str, float]:
        """Guest name -> time of its latest callback."""
        return {name: at for name, phase, at in self.requests() if phase == "os_callback"}

    def boot(self, guests: Sequence[vrack.GuestState]) -> dict[str, dict[str, float]]:
        """Boot ``guests`` at once; per guest, phase -> seconds since its QEMU start."""
        assert self.rack is not None
        boots = boot_to_callback(self.rack.netns, self.rack.accel, guests, self.callbacks)
        phases: dict[str, dict[str, float]] = {name: {} for name in boots}
        for name, phase, at in self.requests():
            boot = boots.get(name)
            if boot and boot.started <= at <= boot.callback:
                phases[name].setdefault(phase, at - boot.started)
        return phases

    def down(self) -> None:
        for proc in self.procs:
            stop_proc(proc)
        self.procs.clear()
        with contextlib.suppress(Exception):
            vrack.down(self.name, self.workdir / "rack")


# --- the HTTP server, run inside the namespace as ``pxe_chain.py serve`` ------------------


class _Handler(SimpleHTTPRequestHandler):
    """http.server's file handler; every request (and a POST's answer) is recorded."""

    record: Path
    lock = threading.Lock()

    def _record(self) -> None:
        row = {"at": time.time(), "client": self.client_address[0], "method": self.command}
        row["path"] = self.path
        with self.lock, self.record.open("a") as out:
            out.write(json.dumps(row) + "\n")

    def do_GET(self) -> None:
        self._record()
        super().do_GET()

    def do_POST(self) -> None:
        self._record()
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(argv: Sequence[str], base: type[_Handler] = _Handler, prog: str = "pxe_chain.py") -> None:
    """The recording file server (``base`` handles the requests), until killed."""
    parser = argparse.ArgumentParser(prog=f"{prog} serve")
    for opt in ("--root", "--bind", "--record", "--ready"):
        parser.add_argument(opt, required=True)
    parser.add_argument("--port", type=int, default=HTTP_PORT)
    args = parser.parse_args(argv)
    handler = type("Handler", (base,), {"record": Path(args.record)})
    server = ThreadingHTTPServer(
        (args.bind, args.port), functools.partial(handler, directory=args.root)
    )
    Path(args.ready).write_text(f"{os.getpid()}\n")
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: pxe_chain.py serve --root DIR --bind ADDR --record F --ready F")
    serve(sys.argv[2:])
