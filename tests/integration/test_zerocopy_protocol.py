"""The zero-copy HTTP protocol on a real uvicorn server on loopback, in this process.

In-process so that what a response leaves behind can be counted: asyncio tasks,
uvicorn's request tasks, this process's descriptors and the sender threads' jobs.
The app is the image route's own response (:class:`FileRangeResponse`) behind the
daemon's request-id middleware; the clients are raw sockets (nothing normalised).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from provisiond.api.app import RequestIdMiddleware
from provisiond.netboot.file_senders import FileSenders, SenderStopped, SendfileUnsupported
from provisiond.netboot.images import OpenFile
from provisiond.netboot.sendfile import FileRangeResponse
from provisiond.netboot.zerocopy import ZEROCOPY, zero_copy_protocol

SIZE = 9 * (1 << 20) + 4321  # over two sender turns, and not a multiple of anything
DATA = random.Random(13).randbytes(SIZE)
IDLE_S = 1.0
#: A file sendfile(2) refuses (EINVAL) but pread reads.
PROC_STATUS = Path("/proc/self/status")


def _proc_status() -> BinaryIO:
    return PROC_STATUS.open("rb")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]  # the test owns signals
        yield


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    senders: FileSenders


def _file_app(path: Path) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/chunked":  # no Content-Length: h11 frames the span in chunks
            await send({"type": "http.response.start", "status": 200, "headers": []})
            with path.open("rb") as handle:
                await send({"type": ZEROCOPY, "file": handle, "offset": 5, "count": 1000})
            return
        if scope["path"] == "/proc":
            headers = [(b"content-length", b"64")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with _proc_status() as handle:
                await send({"type": ZEROCOPY, "file": handle, "count": 64, "offset": 0})
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(fd)
        opened = OpenFile(fd, info.st_size, info.st_mtime, '"t"')
        response = FileRangeResponse(opened, head=scope["method"] == "HEAD")
        await response(scope, receive, send)

    return app


@contextlib.asynccontextmanager
async def served(path: Path) -> AsyncIterator[Served]:
    senders = FileSenders(threads=2, idle_timeout_s=IDLE_S)
    config = uvicorn.Config(
        RequestIdMiddleware(_file_app(path)),
        http=zero_copy_protocol(senders),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    sock = socket.create_server(("127.0.0.1", 0), backlog=512)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    assert await _settled(lambda: server.started)
    try:
        yield Served(sock.getsockname()[1], server, senders)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        senders.close()
        sock.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settled(check: Callable[[], bool], limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def _warm_up(srv: Served) -> None:
    """One full download (the sender threads start), then wait for its connection to go."""
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{srv.port}/f")).content == DATA
    assert await _settled(lambda: not srv.server.server_state.connections)


async def _response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.contextmanager
def image_file() -> Iterator[BinaryIO]:
    with tempfile.TemporaryFile() as handle:
        handle.write(DATA)
        handle.flush()
        yield handle


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "initrd.img"
    path.write_bytes(DATA)
    return path


def test_keep_alive_and_pipelining_survive_a_zero_copy_body(image: Path) -> None:
    async def main() -> None:
        async with served(image) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            one = b"GET /f HTTP/1.1\r\nHost: t\r\nX-Request-ID: first\r\n\r\n"
            writer.write(
                one + b"HEAD /f HTTP/1.1\r\nHost: t\r\n\r\n" + one.replace(b"first", b"third")
            )
            status, headers, body = await _response(reader)
            assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()
            assert headers["x-request-id"] == "first"  # the middleware saw the response
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and f"content-length: {SIZE}".encode() in head
            status, headers, body = await _response(reader)
            assert status == 200 and body == DATA and headers["x-request-id"] == "third"
            writer.close()
            assert srv.senders.jobs() == 0

    _run(main())


def test_chunked_framing_is_written_around_the_span(image: Path) -> None:
    async def main() -> None:
        async with served(image) as srv:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{srv.port}/chunked")
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.content == DATA[5:1005]

    _run(main())


def test_a_file_sendfile_refuses_is_written_through_the_transport(image: Path) -> None:
    async def main() -> None:
        async with served(image) as srv:
            async with httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{srv.port}"
                first = await client.get(f"{url}/proc")
                second = await client.get(f"{url}/f")  # on the same kept-alive connection
            assert first.status_code == 200 and first.content.startswith(b"Name:")
            assert len(first.content) == 64 and second.content == DATA

    _run(main())


def test_sendfile_refusal_is_told_apart_from_a_peer_that_left() -> None:
    async def main() -> None:
        senders = FileSenders(threads=1)
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            with _proc_status() as handle, pytest.raises(SendfileUnsupported):
                await senders.send(a.fileno(), handle.fileno(), 0, 10)
            b.close()
            with image_file() as handle, pytest.raises(BrokenPipeError):
                await senders.send(a.fileno(), handle.fileno(), 0, 10)
        finally:
            a.close()
            senders.close()

    _run(main())


def test_clients_leaving_mid_body_leave_no_task_fd_or_job(image: Path) -> None:
    async def main() -> None:
        async with served(image) as srv:
            await _warm_up(srv)
            fds, tasks = _fds(), len(asyncio.all_tasks())
            for i in range(24):
                sock = socket.create_connection(("127.0.0.1", srv.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.sendall(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n")
                await asyncio.to_thread(sock.recv, 65536)  # headers and a little body
                if i % 2:  # RST rather than FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            assert await _settled(
                lambda: (
                    not srv.server.server_state.tasks
                    and srv.senders.jobs() == 0
                    and _fds() == fds
                    and len(asyncio.all_tasks()) == tasks
                )
            ), (srv.server.server_state.tasks, srv.senders.jobs(), _fds(), fds)
            async with httpx.AsyncClient() as client:  # and it still serves
                assert (await client.get(f"http://127.0.0.1:{srv.port}/f")).content == DATA

    _run(main())


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(image: Path) -> None:
    async def main() -> None:
        async with served(image) as srv:
            await _warm_up(srv)
            fds = _fds()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fills at once
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n")
            started = time.monotonic()
            assert await _settled(lambda: srv.senders.jobs() == 1, 5)
            assert await _settled(lambda: not srv.server.server_state.tasks, 5 + IDLE_S)
            assert time.monotonic() - started >= 0.8 * IDLE_S
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
                    received += len(chunk)
            sock.close()
            assert received < SIZE  # cut short, not completed
            assert await _settled(lambda: _fds() == fds and srv.senders.jobs() == 0), (
                _fds(),
                fds,
            )

    _run(main())


def test_closing_the_senders_fails_the_job_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        senders = FileSenders(threads=1, idle_timeout_s=30)
        a, b = socket.socketpair()
        a.setblocking(False)
        path = tmp_path / "f"
        path.write_bytes(DATA)
        fds = _fds()
        with path.open("rb") as handle:
            job = asyncio.create_task(senders.send(a.fileno(), handle.fileno(), 0, SIZE))
            await asyncio.sleep(0.3)  # b is never read: the job waits for room
            assert senders.jobs() == 1
            senders.close()
            with pytest.raises(SenderStopped):
                await job
        a.close()
        b.close()
        assert _fds() == fds - 2  # the job's duplicates closed; a, b and the file too
        with pytest.raises(SenderStopped):
            await senders.send(0, 0, 0, 1)

    _run(main())
