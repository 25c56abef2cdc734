"""The bare disk-image deploy that bench_disk_deploy.py measures provisiond against.

:class:`DiskChain` is :class:`tests.bench.pxe_chain.BareChain` (a plain dnsmasq and
``http.server`` in rack namespace ``pvd-<name>``, QEMU started directly) with 1 GiB
guests and a 3 GiB disk each, the Debian disk image (``disk.raw.gz``, a symlink to the
build cache) among the served files, a NoCloud seed whose SSH key the bench holds
(the daemon's user-data shape, plus ``meta-data`` and an empty ``vendor-data``, as the
daemon serves), and a server that also records the phone_home form's host key (this
file run as ``serve``). :meth:`DiskChain.round` on the rack's one guest:

1. the disk reset (:func:`provisiond.rack.vrack_files.make_disk`: sparse, the first
   and last MiB 0xA5, as the rack makes it), QEMU ``-boot n``, seconds to the deploy
   ramdisk's phone_home POST;
2. SSH into the ramdisk (host key pinned from that POST), upload image_writer.py,
   then each write in the given order, each after the same reset (the host file
   truncated and remade in place, so QEMU keeps its fd; the guest's caches dropped),
   timed from the SSH side:

   - ``pipeline``: ``wget -O- URL | gzip -d | dd of=/dev/vda bs=4M oflag=direct``
     (busybox; ``set -o pipefail``), until it exits; it must exit 0 and the image's
     last sector (its backup GPT header) must be on the disk afterwards. Without
     ``iflag=fullblock`` dd writes each short pipe read (~32 KiB) as its own O_DIRECT
     write, as it would for whoever types it;
   - ``fullblock``: the same with ``iflag=fullblock`` (whole 4 MiB writes), for context;
   - ``agent``: ``python3 image_writer.py --target /dev/vda --url --sha256
     --raw-size`` (no ``--seed-url``), until its ``image_written`` line arrives (by
     then the sha256 is checked and the disk fsynced);
3. not timed: the writer's own ``configure()`` writes the NoCloud seed file
   (``seedfrom`` the bare server) into what the last write left;
4. QEMU killed and started again ``-boot c``: seconds to cloud-init's phone_home POST.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from provisiond.deploy.remote_ops import WRITER_PATH  # noqa: E402
from provisiond.deploy.ssh import Remote  # noqa: E402
from provisiond.rack import vrack  # noqa: E402
from provisiond.rack.disk_image import DiskImage  # noqa: E402
from provisiond.rack.ipmi_machine import BootDevice  # noqa: E402
from provisiond.rack.qemu import QemuBackend  # noqa: E402
from provisiond.rack.vrack_files import make_disk  # noqa: E402
from tests.bench.pxe_chain import (  # noqa: E402
    HTTP_PORT,
    POLL_S,
    BareChain,
    ChainError,
    _Handler,
    serial_tail,
    serve,
)

PXE, DISK = BootDevice("pxe"), BootDevice("disk")
RAMDISK_S, WRITE_S, DISK_BOOT_S = 240.0, 900.0, 480.0
PIPE = "set -o pipefail; wget -O- {url} | gzip -d | dd of=/dev/vda bs=4M "
#: The pipeline as typed; and with whole 4 MiB blocks (else dd writes each short pipe read).
PIPELINES = {"pipeline": PIPE + "oflag=direct", "fullblock": PIPE + "iflag=fullblock oflag=direct"}
#: The image's last sector (its backup GPT header): the whole stream reached the disk.
LAST_SECTOR = "dd if=/dev/vda bs=512 skip={skip} count=1 2>/dev/null | head -c 8"
DROP_CACHES = "sync; echo 3 > /proc/sys/vm/drop_caches"
#: Runs the uploaded writer's configure() (BLKRRPART, mount the root, write the seed file).
CONFIGURE = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('w', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); "
    "print(m.configure('vda', '/dev/vda', sys.argv[2], '/'))"
)
#: The daemon's user-data shape (pxe/os/default/user-data.j2).
USER_DATA = """\
#cloud-config
hostname: {hostname}
disable_root: false
ssh_authorized_keys:
  - "{key}"
phone_home:
  url: "{url}"
  post: [pub_key_ed25519, pub_key_ecdsa, pub_key_rsa, instance_id, hostname]
  tries: 30
"""


def keypair() -> tuple[str, str]:
    """(OpenSSH private key PEM, public key line) of a fresh Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    pub = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return pem, pub + " bench"


@dataclass(frozen=True)
class WriteRun:
    kind: str  # pipeline | agent
    seconds: float  # SSH side: command start -> exit (pipeline) or image_written (agent)
    writer: dict[str, Any]  # the agent's image_written event ({} for the pipeline)


@dataclass
class RoundResult:
    ramdisk: float  # QEMU start (-boot n) -> the ramdisk's phone_home POST
    ramdisk_phases: dict[str, float]  # bare HTTP phases of that boot, seconds since start
    writes: list[WriteRun]
    disk_boot: float  # QEMU start (-boot c) -> cloud-init's phone_home POST
    disk_phases: dict[str, float]
    seeded: str  # the partition configure() wrote the seed file into

    def write(self, kind: str) -> WriteRun:
        return next(w for w in self.writes if w.kind == kind)

    def timeline(self) -> dict[str, float]:
        """ramdisk boot + pipeline write + disk boot, in the daemon's phase names."""
        out = {p: s for p, s in self.ramdisk_phases.items() if p != "os_callback"}
        out["ramdisk_callback"] = self.ramdisk
        out["image_written"] = out["disk_boot"] = self.ramdisk + self.write("pipeline").seconds
        if "seed" in self.disk_phases:
            out["os_seed"] = out["disk_boot"] + self.disk_phases["seed"]
        out["os_callback"] = out["disk_boot"] + self.disk_boot
        return out


@dataclass
class DiskChain(BareChain):
    """BareChain plus the disk image, our own seed key and the writes (module doc)."""

    server_script: ClassVar[str] = __file__
    disk: DiskImage | None = None
    disk_mib: int = 3072
    pem: str = ""
    pub: str = ""
    log: Callable[[str], None] = print
    backends: list[QemuBackend] = field(default_factory=list)

    @property
    def image_url(self) -> str:
        return f"{self.base_url}/disk.raw.gz"

    def up(self) -> None:
        self.pem, self.pub = keypair()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rack = vrack.up(
            self.count, name=self.name, state_dir=self.workdir / "rack", subnet=self.subnet,
            ipv6_prefix=self.ipv6_prefix, ram_mib=self.ram_mib, disk_mib=self.disk_mib,
            http_port=HTTP_PORT,
        )  # fmt: skip
        self._write_www()
        self._start_dnsmasq()
        self._start_http()

    def _write_www(self) -> None:
        assert self.disk is not None
        super()._write_www()
        www = self.workdir / "www"
        link = www / "disk.raw.gz"
        link.unlink(missing_ok=True)
        link.symlink_to(self.disk.gz)  # http.server opens it by path: followed
        seed = www / "seed"
        url = f"{self.base_url}/callback"
        (seed / "user-data").write_text(USER_DATA.format(hostname="bare", key=self.pub, url=url))
        (seed / "meta-data").write_text("instance-id: bare\nlocal-hostname: bare\n")
        (seed / "vendor-data").write_text("#cloud-config\n{}\n")

    def posts(self) -> list[tuple[str, float, str]]:
        """(client address, time, pub_key_ed25519) of every phone_home POST."""
        rows = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.record_file.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    row = json.loads(line)
                    if (row["method"], row["path"]) == ("POST", "/callback"):
                        rows.append((row["client"], float(row["at"]), row.get("host_key", "")))
        return rows

    def _wait_post(
        self, guest: vrack.GuestState, backend: QemuBackend, since: float, limit_s: float
    ) -> tuple[float, str]:
        limit = time.monotonic() + limit_s
        while time.monotonic() < limit:
            for client, at, key in self.posts():
                if client == guest.ip and at >= since:
                    return at, key
            if not backend.is_on():
                raise ChainError(f"QEMU exited before phoning home\n{serial_tail(guest)}")
            time.sleep(POLL_S)
        raise ChainError(f"no phone_home in {limit_s:.0f}s\n{serial_tail(guest)}")

    def _phases(self, guest: vrack.GuestState, start: float, end: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, phase, at in self.requests():
            if name == guest.name and start <= at <= end:
                out.setdefault(phase, at - start)
        return out

    def _reset(self, guest: vrack.GuestState, remote: Remote | None = None) -> None:
        make_disk(Path(guest.disk), guest.disk_mib)  # opened "wb": the same inode
        if remote is not None:
            remote.check(DROP_CACHES, timeout=120)

    def round(self, order: Sequence[str]) -> RoundResult:
        """One ramdisk boot, the writes in ``order``, one disk boot (module doc)."""
        assert self.rack is not None and self.disk is not None
        guest = self.guests[0]
        backend = QemuBackend(guest.qemu_guest(), self.rack.netns, self.rack.accel)
        self.backends.append(backend)
        writer = resources.files("provisiond.agent").joinpath("image_writer.py").read_bytes()
        self._reset(guest)
        try:
            started = time.time()
            backend.power_on(PXE)
            at, host_key = self._wait_post(guest, backend, started, RAMDISK_S)
            ramdisk, ramdisk_phases = at - started, self._phases(guest, started, at)
            self.log(f"bare: ramdisk phoned home {ramdisk:.1f}s after QEMU start")
            netns = self.rack.netns
            with Remote.connect(guest.ip, host_key, self.pem, attempts=5, netns=netns) as remote:
                remote.put(writer, WRITER_PATH, mode=0o755)
                writes = []
                for kind in order:
                    self._reset(guest, remote)
                    writes.append(self._write(remote, kind))
                seed = f"{self.base_url}/seed/"
                argv = ["python3", "-c", CONFIGURE, WRITER_PATH, seed]
                seeded = remote.check(shlex.join(argv), timeout=180).strip()
            backend.power_off()
            started = time.time()
            backend.power_on(DISK)
            at, _ = self._wait_post(guest, backend, started, DISK_BOOT_S)
            disk_phases = self._phases(guest, started, at)
            self.log(f"bare: the disk booted to cloud-init's phone_home in {at - started:.1f}s")
            return RoundResult(ramdisk, ramdisk_phases, writes, at - started, disk_phases, seeded)
        finally:
            backend.power_off()

    def _write(self, remote: Remote, kind: str) -> WriteRun:
        assert self.disk is not None
        info = self.disk.info()
        raw = int(info["virtual_size"])
        if kind in PIPELINES:
            command = PIPELINES[kind].format(url=shlex.quote(self.image_url))
            started = time.monotonic()
            result = remote.run(command, timeout=WRITE_S)
            seconds = time.monotonic() - started
            records = re.findall(r"\d+\+\d+ records out", result.stderr)
            tail = remote.run(LAST_SECTOR.format(skip=raw // 512 - 1), timeout=60).stdout
            if result.status or not records or tail != "EFI PART":
                raise ChainError(
                    f"{kind}: exit {result.status}, last sector {tail!r}: {result.stderr[-800:]}"
                )
            self.log(
                f"bare: pipeline wrote {raw / 1e6:.0f} MB in {seconds:.1f}s (dd: {records[-1]})"
            )
            return WriteRun(kind, seconds, {"dd": records[-1]})
        argv = ["python3", WRITER_PATH, "--target", "/dev/vda", "--url", self.image_url,
                "--sha256", str(info["sha256_gz"]), "--raw-size", str(raw)]  # fmt: skip
        written: dict[str, Any] = {}

        def line(text: str) -> None:
            with contextlib.suppress(ValueError):
                event = json.loads(text)
                if isinstance(event, dict) and event.get("phase") == "image_written":
                    written.update(event, arrived=time.monotonic())

        started = time.monotonic()
        result = remote.run(shlex.join(argv), timeout=WRITE_S, on_line=line)
        if result.status or "arrived" not in written:
            raise ChainError(
                f"agent: exit {result.status}: {(result.stdout + result.stderr)[-800:]}"
            )
        seconds = float(written.pop("arrived")) - started
        self.log(f"bare: agent wrote {raw / 1e6:.0f} MB in {seconds:.1f}s")
        return WriteRun(kind, seconds, written)

    def down(self) -> None:
        for backend in self.backends:
            backend.power_off()
        super().down()


# --- the HTTP server, run inside the namespace as ``disk_chain.py serve`` ------------------


class _FormHandler(_Handler):
    """pxe_chain's recording file handler; a POST also records the form's host key."""

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
        key = form.get("pub_key_ed25519", [""])[0].strip()
        row = {"at": time.time(), "client": self.client_address[0], "method": self.command,
               "path": self.path, "host_key": key}  # fmt: skip
        with self.lock, self.record.open("a") as out:
            out.write(json.dumps(row) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: disk_chain.py serve --root DIR --bind ADDR --record F --ready F")
    serve(sys.argv[2:], _FormHandler, "disk_chain.py")
