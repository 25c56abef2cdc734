"""Image files from a real ``provisiond serve`` on loopback: the zero-copy body path.

The daemon runs as a user runs it (its HTTP protocol is
:class:`provisiond.netboot.zerocopy.ZeroCopyH11Protocol`), with one image whose
initrd spans several sender turns. Requests are raw bytes on sockets, so keep-alive,
pipelining and what a cut connection leaves behind are seen as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, cli

MiB = 1 << 20
INITRD = random.Random(21).randbytes(11 * MiB + 777)
KERNEL = random.Random(22).randbytes(256 * 1024 + 3)
SHA = hashlib.sha256(INITRD).hexdigest()
URL = "/images/live/initrd.img"
BURST = 300
BURST_LIMIT_S = 90.0


def _start(root: Path, **env: str) -> Daemon:
    d = Daemon(root / "data", extra_env=dict(env))
    d.data_dir.mkdir(parents=True)
    d.prepare()
    src = root / "src"
    src.mkdir()
    (src / "vmlinuz").write_bytes(KERNEL)
    (src / "initrd.img").write_bytes(INITRD)
    added = cli("images", "add", "live", "--kernel", str(src / "vmlinuz"),
                "--initrd", str(src / "initrd.img"), env=d.env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    (root / "secret.txt").write_bytes(b"TOP-SECRET-OUTSIDE")
    (d.data_dir / "images" / "live" / "evil").symlink_to(root / "secret.txt")
    d.start(timeout=30)
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = _start(tmp_path_factory.mktemp("boot-files"))
    try:
        yield d
    finally:
        d.stop(signal.SIGTERM)


def _request(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Conn:
    """One keep-alive connection; reads responses one after another."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        status = int(lines[0].split()[1])
        length = 0 if head or status in (304, 204) else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def _get(
    daemon: Daemon, method: str, path: str, *headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = Conn(daemon.port)
    try:
        conn.send(_request(method, path, *headers))
        return conn.response(head=method == "HEAD")
    finally:
        conn.close()


def test_the_whole_file_arrives_byte_for_byte(daemon: Daemon) -> None:
    status, headers, body = _get(daemon, "GET", URL, "X-Request-ID: whole-1")
    assert status == 200 and hashlib.sha256(body).hexdigest() == SHA
    assert headers["content-length"] == str(len(INITRD)) and headers["etag"] == f'"{SHA}"'
    assert headers["accept-ranges"] == "bytes" and headers["x-request-id"] == "whole-1"


def test_ranges(daemon: Daemon) -> None:
    size = len(INITRD)
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=5000000-9000000": (5000000, 9000001),
        "bytes=-4096": (size - 4096, size),
        f"bytes={size - 10}-": (size - 10, size),
        f"bytes=1-{size + 99}": (1, size),
    }
    for header, (lo, hi) in cases.items():
        status, headers, body = _get(daemon, "GET", URL, f"Range: {header}")
        assert status == 206 and body == INITRD[lo:hi], header
        assert headers["content-range"] == f"bytes {lo}-{hi - 1}/{size}", header
    for header in (f"bytes={size}-", "bytes=-0"):
        status, headers, body = _get(daemon, "GET", URL, f"Range: {header}")
        assert status == 416 and headers["content-range"] == f"bytes */{size}", header
    status, _, body = _get(daemon, "GET", URL, "Range: bytes=0-1,5-6")
    assert status == 200 and body == INITRD  # multi-range: ignored
    status, _, body = _get(daemon, "GET", URL, "Range: bytes=0-9", 'If-Range: "stale"')
    assert status == 200 and body == INITRD
    status, _, body = _get(daemon, "GET", URL, "Range: bytes=0-9", f'If-Range: "{SHA}"')
    assert status == 206 and body == INITRD[:10]


def test_head_and_if_none_match(daemon: Daemon) -> None:
    status, headers, body = _get(daemon, "HEAD", URL)
    assert status == 200 and body == b"" and headers["content-length"] == str(len(INITRD))
    for tag in (f'"{SHA}"', f'W/"{SHA}"', f'"other", "{SHA}"', "*"):
        status, headers, body = _get(daemon, "GET", URL, f"If-None-Match: {tag}")
        assert status == 304 and body == b"" and headers["etag"] == f'"{SHA}"', tag
    status, _, body = _get(daemon, "GET", URL, 'If-None-Match: "other"')
    assert status == 200 and body == INITRD


def test_keep_alive_and_pipelining_after_zero_copy_bodies(daemon: Daemon) -> None:
    conn = Conn(daemon.port)
    try:
        conn.send(
            _request("GET", URL)
            + _request("HEAD", URL)
            + _request("GET", URL, "Range: bytes=100-199")
            + _request("GET", "/images/live/vmlinuz")
        )
        assert conn.response()[2] == INITRD
        assert conn.response(head=True)[0] == 200
        assert conn.response()[2] == INITRD[100:200]
        assert conn.response()[2] == KERNEL
        conn.send(_request("GET", URL, "Range: bytes=-5"))  # and the connection lives on
        assert conn.response()[2] == INITRD[-5:]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/images/live/..%2f..%2fsecret.txt",
        "/images/live/%2e%2e/%2e%2e/secret.txt",
        "/images/../../secret.txt",
        "/images/live/../../../etc/passwd",
        "/images/live/evil",
        "/images/live/.sha256.json",
        "/images/%2e%2e/live/initrd.img",
        "/images/live/initrd.img%00",
        "/images/live//etc/passwd",
        "/images/live/initrd.img/..",
    ],
)
def test_no_path_leads_outside_the_store(daemon: Daemon, path: str) -> None:
    status, _, body = _get(daemon, "GET", path)
    assert 400 <= status < 500, (path, status)
    assert b"TOP-SECRET" not in body and b"root:" not in body


def _daemon_fds(daemon: Daemon) -> int:
    """The daemon's sockets and open image files (its database pool may grow meanwhile)."""
    assert daemon.proc is not None
    fds = Path(f"/proc/{daemon.proc.pid}/fd")
    images = str((daemon.data_dir / "images").resolve())
    count = 0
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        count += target.startswith("socket:") or target.startswith(images)
    return count


def test_clients_leaving_mid_body_leak_nothing(daemon: Daemon) -> None:
    assert _get(daemon, "GET", URL)[2] == INITRD  # the sender threads exist
    time.sleep(0.5)
    fds = _daemon_fds(daemon)
    for i in range(30):
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(_request("GET", URL))
        sock.recv(65536)  # the headers and a little of the body
        if i % 2:  # RST rather than FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    deadline = time.monotonic() + 15
    while _daemon_fds(daemon) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _daemon_fds(daemon) <= fds
    assert _get(daemon, "GET", URL)[2] == INITRD  # still serving
    assert "image_download_cut" in daemon.log_events()
    assert daemon.failures() == []


async def _one(port: int, path: str, deadline: float) -> tuple[str, float]:
    """``ok``, ``503`` (with Retry-After) or what went wrong; and the seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline - started):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(_request("GET", path, "Connection: close"))
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read()
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return type(exc).__name__, time.monotonic() - started
    took = time.monotonic() - started
    if head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower():
        return "503", took
    if head.startswith(b"HTTP/1.1 200") and body == KERNEL:
        return "ok", took
    return head.split(b"\r\n", 1)[0].decode("latin-1"), took


async def _burst(port: int, count: int) -> tuple[Counter[str], float]:
    deadline = time.monotonic() + BURST_LIMIT_S
    results = await asyncio.gather(
        *(_one(port, "/images/live/vmlinuz", deadline) for _ in range(count))
    )
    refused = [took for what, took in results if what == "503"]
    return Counter(what for what, _ in results), max(refused, default=0.0)


def test_a_burst_of_connections_is_all_served(daemon: Daemon) -> None:
    outcomes, _ = asyncio.run(_burst(daemon.port, BURST))
    assert outcomes == {"ok": BURST}, outcomes
    assert daemon.failures() == []


def test_past_its_bound_the_daemon_refuses_fast_with_retry_after(
    tmp_path: Path,
) -> None:
    d = _start(tmp_path, PROVISIOND_FILES_MAX_IN_FLIGHT="4")
    try:
        outcomes, slowest_refusal = asyncio.run(_burst(d.port, BURST))
        assert set(outcomes) <= {"ok", "503"}, outcomes  # no connection failed
        assert outcomes["ok"] >= 4 and outcomes["503"] > 0, outcomes
        assert slowest_refusal < 10, slowest_refusal
        assert d.failures() == []
    finally:
        d.stop(signal.SIGTERM)
