"""The deploy ramdisk's image writer against its real peers, run as the daemon runs it
(``python3 image_writer.py ...``, JSON lines on stdout).

The image is served by the daemon's own route (``/images/NAME/disk.raw.gz``: the boot
router's one Range plus If-Range with the manifest's ETag) from a real image store,
by uvicorn on 127.0.0.1 in this process. Targets are a file and a real loop device,
both pre-filled with 0xA5 so every byte the image has (zeros too) must really be
written. A small loopback TCP proxy cuts (closes, resets or stalls) the connection
mid-download; a whole-disk ext4 file system on a loop device takes the cloud-init
seed through the writer's real mount/umount path.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from provisiond.agent import image_writer
from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.netboot.images import ImageStore
from provisiond.secrets import SecretBox
from tests.api.test_boot_routes import boot_app

WRITER = Path(image_writer.__file__)
MIB = 1 << 20
GARBAGE = 0xA5


def make_raw(size: int, seed: int = 12) -> bytes:
    """Random, zero and patterned runs of 256 KiB..8 MiB (zero runs that span and split
    4 MiB blocks), ending in a partial block."""
    rng, out, left = random.Random(seed), bytearray(), size
    while left:
        n = min(left, rng.choice((256 << 10, 1 << 20, 3 << 20, 8 << 20)))
        kind = rng.choice(("random", "zero", "zero", "pattern"))
        if kind == "random":
            out += rng.randbytes(n)
        elif kind == "zero":
            out += bytes(n)
        else:
            out += (b"provisiond" * (n // 10 + 1))[:n]
        left -= n
    out[:8] = b"EFI PART"  # never all zeros where the wipe must show
    out[-8:] = b"END-DISK"
    return bytes(out)


RAW = make_raw(40 * MIB + 3 * 512)


@dataclass
class Served:
    url: str
    gz: bytes
    raw: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.gz).hexdigest()


class Daemon:
    """The daemon's app on 127.0.0.1 (uvicorn in a thread) over a real image store."""

    def __init__(self, services: Services) -> None:
        self.store = ImageStore(services.settings.images_path)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(boot_app(services), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"

    def publish(self, name: str, raw: bytes, gz: bytes | None = None) -> Served:
        """Store ``gz`` (default: gzip of ``raw``) as NAME/disk.raw.gz, manifest and all."""
        data = gzip.compress(raw, compresslevel=1) if gz is None else gz

        def build(folder: Path) -> tuple[dict[str, str], None]:
            (folder / "disk.raw.gz").write_bytes(data)
            return {"disk.raw.gz": hashlib.sha256(data).hexdigest()}, None

        self.store.remove(name)
        self.store.add_built(name, build)
        return Served(f"http://127.0.0.1:{self.port}/images/{name}/disk.raw.gz", data, raw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def daemon(sqlite_db: Database, tmp_path: Path) -> Iterator[Daemon]:
    settings = load_settings(None, data_dir=tmp_path / "data", database_url=sqlite_db.url)
    services = Services(
        settings=settings,
        db=sqlite_db,
        secrets=SecretBox.from_key_file(settings.key_file),
        instance="test",
    )
    running = Daemon(services)
    try:
        yield running
    finally:
        running.stop()
        services.close()


@dataclass
class Result:
    status: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float

    def phase(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e.get("phase") == name)

    @property
    def error(self) -> dict[str, Any]:
        assert self.events[-1]["event"] == "error", self.events
        return self.events[-1]


def write(served: Served, target: Path, *extra: str, sha256: str = "", raw_size: int = 0) -> Result:
    argv = [
        sys.executable, str(WRITER), "--url", served.url,
        "--sha256", sha256 or served.sha256, "--raw-size", str(raw_size or len(served.raw)),
        "--target", str(target), *extra,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    events = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON
    return Result(done.returncode, events, done.stderr, time.monotonic() - started)


def garbage_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        for _ in range(size // MIB):
            handle.write(bytes([GARBAGE]) * MIB)
        handle.write(bytes([GARBAGE]) * (size % MIB))
    return path


def assert_written(result: Result, served: Served, target: Path) -> None:
    assert result.status == 0, (result.events, result.stderr)
    assert [e.get("phase", e["event"]) for e in result.events] == [
        "disk_selected", "image_download", "image_written", "done",
    ]  # fmt: skip
    written = result.phase("image_written")
    assert written["bytes"] == len(served.raw)
    assert written["download_bytes"] == len(served.gz)
    assert written["sha256"] == served.sha256
    with target.open("rb") as disk:
        assert disk.read(len(served.raw)) == served.raw


def test_a_file_target_reads_back_as_the_image(daemon: Daemon, tmp_path: Path) -> None:
    served = daemon.publish("deb", RAW)
    target = garbage_file(tmp_path / "disk", len(RAW) + 8 * MIB)
    result = write(served, target)
    assert_written(result, served, target)
    selected = result.phase("disk_selected")
    assert selected == {
        "event": "phase", "phase": "disk_selected", "disk": "disk",
        "size_bytes": len(RAW) + 8 * MIB, "why": "--target",
    }  # fmt: skip
    assert result.phase("image_download")["url"] == served.url
    written = result.phase("image_written")
    assert written["resumed"] == 0 and written["zeroed_bytes"] == 0  # a file: zeros written
    assert written["seconds"] > 0 and written["mb_s"] > 0
    tail = target.read_bytes()[len(RAW) :]
    assert tail[-MIB:] == bytes(MIB)  # the old backup GPT at the disk's end is gone
    assert tail[: 7 * MIB] == bytes([GARBAGE]) * 7 * MIB  # nothing else past the image


def test_gzip_members_are_inflated_one_after_another(daemon: Daemon, tmp_path: Path) -> None:
    half = len(RAW) // 2
    gz = gzip.compress(RAW[:half], 1) + gzip.compress(RAW[half:], 6)  # like pigz/concat
    served = daemon.publish("multi", RAW, gz)
    target = garbage_file(tmp_path / "disk", len(RAW))
    assert_written(write(served, target), served, target)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Attach files as loop devices; every one is detached at teardown, pass or fail."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("loop devices need root and losetup")
    attached: list[str] = []

    def attach(backing: Path) -> Path:
        done = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        attached.append(done.stdout.strip())
        return Path(attached[-1])

    try:
        yield attach
    finally:
        for device in attached:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30, check=False)


def test_a_loop_device_reads_back_as_the_image(
    daemon: Daemon, tmp_path: Path, loop_device: Callable[[Path], Path]
) -> None:
    served = daemon.publish("deb", RAW)
    backing = garbage_file(tmp_path / "disk.img", len(RAW))
    device = loop_device(backing)
    result = write(served, device)
    assert_written(result, served, device)
    written = result.phase("image_written")
    blocks = [RAW[at : at + 4 * MIB] for at in range(0, len(RAW), 4 * MIB)]
    zero_blocks = sum(len(b) for b in blocks if not b.strip(b"\0"))
    assert written["zeroed_bytes"] == zero_blocks > 0  # each all-zero block by BLKZEROOUT
    assert backing.read_bytes() == RAW  # through the loop device to the file itself


class CutProxy:
    """127.0.0.1:port -> the daemon. The first ``cuts`` connections end after ``after``
    bytes went to the client: closed (FIN), reset (RST) or stalled (kept open, silent)."""

    def __init__(self, upstream: int, *, after: int, cuts: int, how: str) -> None:
        self.upstream, self.after, self.cuts, self.how = upstream, after, cuts, how
        self.on_cut: Callable[[], object] = lambda: None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.open: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, served: Served) -> str:
        return served.url.replace(served.url.split("/")[2], f"127.0.0.1:{self.port}")

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections <= self.cuts
            threading.Thread(target=self._relay, args=(client, cut), daemon=True).start()

    def _relay(self, client: socket.socket, cut: bool) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
        self.open += [client, server]
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        sent = 0
        try:
            while data := server.recv(65536):
                if cut and sent + len(data) >= self.after:
                    client.sendall(data[: self.after - sent])
                    self.on_cut()
                    if self.how == "stall":
                        self.stop.wait(30)
                    elif self.how == "reset":  # linger 0: close() sends RST
                        client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    # wakes the other relay thread's recv, which would keep the socket open
                    client.shutdown(socket.SHUT_RD if self.how == "reset" else socket.SHUT_RDWR)
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for sock in self.open:
            sock.close()


@pytest.fixture
def proxies() -> Iterator[list[CutProxy]]:
    made: list[CutProxy] = []
    try:
        yield made
    finally:
        for proxy in made:
            proxy.close()


@pytest.mark.parametrize("how", ["close", "reset", "stall"])
def test_a_cut_download_resumes_where_it_stopped(
    daemon: Daemon, tmp_path: Path, proxies: list[CutProxy], how: str
) -> None:
    served = daemon.publish("deb", RAW)
    proxy = CutProxy(daemon.port, after=len(served.gz) // 3, cuts=2, how=how)
    proxies.append(proxy)
    cut = Served(proxy.url(served), served.gz, served.raw)
    target = garbage_file(tmp_path / "disk", len(RAW))
    result = write(cut, target, "--timeout", "2")
    assert_written(result, cut, target)
    assert result.phase("image_written")["resumed"] == 2  # one resume per cut
    assert proxy.connections == 3
    why = {"close": "closed early", "reset": "ConnectionResetError", "stall": "timed out"}[how]
    assert result.stderr.count("download: ") == 2, result.stderr  # each cut, with its offset
    assert result.stderr.count(why) == 2, result.stderr


def test_a_file_replaced_during_the_download_fails_the_resume(
    daemon: Daemon, tmp_path: Path, proxies: list[CutProxy]
) -> None:
    """If-Range: the resume asks for the old ETag's bytes; the server has a new file,
    answers 200 with all of it, and the writer must not splice two images together."""
    served = daemon.publish("deb", RAW)
    proxy = CutProxy(daemon.port, after=len(served.gz) // 2, cuts=1, how="close")
    proxy.on_cut = lambda: daemon.publish("deb", make_raw(len(RAW), seed=99))
    proxies.append(proxy)
    target = garbage_file(tmp_path / "disk", len(RAW))
    result = write(Served(proxy.url(served), served.gz, served.raw), target)
    assert result.status == 1
    error = result.error
    assert error["code"] == "download_failed" and "changed on the server" in error["message"]
    assert error["wiped"][0] == [0, MIB] and error["wiped"][-1] == [len(RAW) - MIB, MIB]
    assert len(error["wiped"]) == 3  # and the last MiB written before the cut
    with target.open("rb") as disk:
        assert disk.read(MIB) == bytes(MIB)


def test_a_wrong_checksum_wipes_both_ends(daemon: Daemon, tmp_path: Path) -> None:
    served = daemon.publish("deb", RAW)
    target = garbage_file(tmp_path / "disk", len(RAW) + 4 * MIB)
    wrong = hashlib.sha256(b"another image").hexdigest()
    result = write(served, target, sha256=wrong.upper())
    assert result.status == 1
    error = result.error
    assert error["code"] == "checksum_mismatch"
    assert (error["expected"], error["actual"]) == (wrong, served.sha256)
    size = len(RAW) + 4 * MIB
    assert error["wiped"] == [[0, MIB], [len(RAW) - MIB, MIB], [size - MIB, MIB]]
    data = target.read_bytes()
    assert data[:MIB] == bytes(MIB)  # the primary GPT: gone
    assert data[len(RAW) - MIB : len(RAW)] == bytes(MIB)  # the image's backup GPT: gone
    assert data[-MIB:] == bytes(MIB)  # the disk's last MiB
    assert data[MIB : len(RAW) - MIB] == RAW[MIB : len(RAW) - MIB]  # the rest was written
    assert [e.get("phase", e["event"]) for e in result.events][-1] == "error"


@pytest.mark.parametrize("delta", [-512, 4096])
def test_a_wrong_raw_size_fails_and_wipes(daemon: Daemon, tmp_path: Path, delta: int) -> None:
    served = daemon.publish("deb", RAW)
    target = garbage_file(tmp_path / "disk", len(RAW) + 2 * MIB)
    result = write(served, target, raw_size=len(RAW) + delta)
    assert result.status == 1
    error = result.error
    assert error["code"] == "size_mismatch"
    assert (error["expected"], error["actual"]) == (len(RAW) + delta, len(RAW))
    assert error["wiped"][0] == [0, MIB]
    assert target.read_bytes()[:MIB] == bytes(MIB)


def test_a_corrupt_download_is_a_checksum_mismatch(daemon: Daemon, tmp_path: Path) -> None:
    """A flipped byte breaks inflating; the writer reads on and reports the sha256."""
    good = gzip.compress(RAW, 1)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    served = daemon.publish("bad", RAW, bytes(bad))
    target = garbage_file(tmp_path / "disk", len(RAW))
    result = write(served, target, sha256=hashlib.sha256(good).hexdigest())
    assert result.error["code"] == "checksum_mismatch"
    assert result.error["actual"] == served.sha256


def silent_server() -> tuple[socket.socket, int]:
    """Accepts connections (the kernel's backlog) and never answers."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    return sock, sock.getsockname()[1]


def test_a_download_that_never_works_fails_in_bounded_time(tmp_path: Path) -> None:
    target = garbage_file(tmp_path / "disk", 8 * MIB)
    sha = "0" * 64
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{free.getsockname()[1]}/images/x/disk.raw.gz"
    result = write(Served(refused, b"", bytes(MIB)), target, "--tries", "3", sha256=sha)
    error = result.error
    assert error["code"] == "download_failed" and error["tries"] == 3
    assert "Connection refused" in error["message"] and error["wiped"] == []
    assert result.seconds < 10  # backoff 0.5 s + 1 s
    silent, port = silent_server()
    try:
        url = f"http://127.0.0.1:{port}/images/x/disk.raw.gz"
        args = ("--tries", "2", "--timeout", "1")
        result = write(Served(url, b"", bytes(MIB)), target, *args, sha256=sha)
    finally:
        silent.close()
    assert result.error["code"] == "download_failed" and result.error["tries"] == 2
    assert "timed out" in result.error["message"]
    assert result.seconds < 10  # two 1 s waits and a 0.5 s backoff
    assert target.read_bytes() == bytes([GARBAGE]) * 8 * MIB  # nothing written, nothing wiped


def test_a_missing_image_fails_at_once(daemon: Daemon, tmp_path: Path) -> None:
    served = daemon.publish("deb", RAW)
    missing = Served(served.url.replace("/deb/", "/nope/"), served.gz, served.raw)
    result = write(missing, garbage_file(tmp_path / "disk", len(RAW)))
    assert result.error["code"] == "download_failed"
    assert (result.error["status"], result.error["tries"]) == (404, 1)
    assert result.seconds < 10


def test_too_small_a_target_is_refused_before_writing(daemon: Daemon, tmp_path: Path) -> None:
    served = daemon.publish("deb", RAW)
    target = garbage_file(tmp_path / "disk", len(RAW) - 512)
    result = write(served, target)
    assert result.error["code"] == "no_disk" and "too small" in result.error["message"]
    assert [e["event"] for e in result.events] == ["error"]
    assert target.read_bytes() == bytes([GARBAGE]) * (len(RAW) - 512)


def ext4_disk(tmp_path: Path, *, cloud: bool) -> bytes:
    """A whole-disk ext4 file system made from a tree (mkfs.ext4 -d): no mount needed."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    if cloud:
        (tree / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
        (tree / "var/lib/cloud/instances/old-deploy").mkdir(parents=True)
        (tree / "var/lib/cloud/instances/old-deploy/obj.pkl").write_bytes(b"old")
        (tree / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/old-deploy")
    image = tmp_path / "root.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "24M"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return image.read_bytes()


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, timeout=30
    )
    return done.stdout


@pytest.mark.parametrize("cloud", [True, False])
def test_the_seed_is_written_into_the_root_file_system(
    daemon: Daemon, tmp_path: Path, loop_device: Callable[[Path], Path], cloud: bool
) -> None:
    """The configure step's mount, write and umount for real; a whole-disk file system
    stands in for the partitions the host kernel cannot parse (the QEMU E2E has them)."""
    if not shutil.which("mkfs.ext4") or not shutil.which("debugfs"):
        pytest.skip("needs e2fsprogs")
    raw = ext4_disk(tmp_path, cloud=cloud)
    served = daemon.publish("ext", raw)
    backing = garbage_file(tmp_path / "disk.img", len(raw))
    device = loop_device(backing)
    seed = "http://10.0.0.1:8080/meta/3f1c/"
    try:
        result = write(served, device, "--seed-url", seed)
    finally:
        assert not Path(image_writer.MOUNTPOINT).is_mount()  # unmounted, even on failure
        with contextlib.suppress(OSError):
            os.rmdir(image_writer.MOUNTPOINT)  # the writer's, on this host
    if not cloud:
        assert result.error["code"] == "configure_failed"
        assert "no /etc/cloud" in result.error["message"]
        return
    assert result.status == 0, (result.events, result.stderr)
    configured = result.phase("disk_configured")
    assert configured == {
        "event": "phase", "phase": "disk_configured", "root": device.name, "seed_url": seed,
    }  # fmt: skip
    assert result.events[-1] == {"event": "done"}
    cfg = debugfs(backing, "cat /etc/cloud/cloud.cfg.d/99_provisiond.cfg")
    assert cfg == (
        "# written by provisiond at deploy time\n"
        "datasource_list: [NoCloud]\n"
        "datasource:\n"
        "  NoCloud:\n"
        f"    seedfrom: {seed}\n"
        "manual_cache_clean: true\n"
    )
    assert "instances" in debugfs(tmp_path / "root.ext4", "ls -l /var/lib/cloud")  # before
    listing = debugfs(backing, "ls -l /var/lib/cloud")
    assert "instance" not in listing and ".." in listing  # a clean first boot
