"""Serving image files: one HTTP Range, HEAD, ETag, and a zero-copy body path.

Under ``provisiond serve`` the server's HTTP protocol is
:class:`provisiond.netboot.zerocopy.ZeroCopyH11Protocol`, which offers the ASGI
``http.response.zerocopysend`` extension: the body is handed to the kernel
(``os.sendfile`` on sender threads) and no byte of it passes through Python.
Measured with 50 clients x 100 MiB on loopback (``tests/bench/bench_boot_files.py``,
2 shared cores): 1 MiB ``pread`` chunks 0.63-0.79x nginx; zero-copy about 0.9x,
at nginx's CPU per GB.

Where a server offers no such extension (a TLS listener, the test client), the
body is read with ``os.pread`` in 1 MiB pieces on a worker thread of its own
limiter and sent as ordinary ASGI body messages (Starlette's FileResponse uses
64 KiB chunks: 16x more thread hops and event-loop wake-ups per byte).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from email.utils import formatdate

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from provisiond.logging import get_logger
from provisiond.netboot.images import OpenFile
from provisiond.netboot.zerocopy import ZEROCOPY, BodyCut

log = get_logger(__name__)

CHUNK = 1 << 20
#: Threads reading image chunks when the zero-copy path cannot be used: their own
#: limiter, so downloads never take the threads the API and boot routes run on.
FILE_READ_THREADS = 16
_FILE_READS: RunVar[CapacityLimiter] = RunVar("provisiond_file_reads")


def _file_reads() -> CapacityLimiter:
    try:
        return _FILE_READS.get()
    except LookupError:
        limiter = CapacityLimiter(FILE_READ_THREADS)
        _FILE_READS.set(limiter)
        return limiter


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class ByteRange:
    start: int
    length: int


class Unsatisfiable(Exception):
    """The Range header names no byte of the file: answer 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range -> the bytes to send; None means "send the whole file".

    Malformed and multi-range headers are ignored (RFC 9110 lets a server do that);
    a well-formed range past the end raises :class:`Unsatisfiable`.
    """
    if not header or len(header) > 200:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # suffix: the last N bytes
        count = min(int(last), size)
        if count == 0:
            raise Unsatisfiable
        return ByteRange(size - count, count)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid, ignore
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, end - start + 1)


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` against ``etag``: ``*`` or any listed tag, weakly compared."""
    if not header or len(header) > 2000:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))


class FileRangeResponse(Response):
    """Send ``length`` bytes of ``file.fd`` from ``start``; closes the descriptor.

    ``alongside`` is the caller's own work, run while the body is sent (the image
    route records the fetch); the response ends only once it has finished, so the
    client never sees a complete body before it is done. It must handle its errors.
    """

    def __init__(
        self,
        file: OpenFile,
        *,
        start: int = 0,
        length: int | None = None,
        status_code: int = 200,
        head: bool = False,
        media_type: str = "application/octet-stream",
        alongside: asyncio.Future[None] | None = None,
    ) -> None:
        self.file = file
        self.start = start
        self.length = file.size - start if length is None else length
        self.head = head
        self.alongside = alongside
        headers = {
            "content-length": str(self.length),
            "accept-ranges": "bytes",
            "etag": file.etag,
            "last-modified": formatdate(file.mtime, usegmt=True),
        }
        if status_code == 206:
            end = start + self.length - 1
            headers["content-range"] = f"bytes {start}-{end}/{file.size}"
        super().__init__(b"", status_code=status_code, headers=headers, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if not self.head and self.length > 0:
                if ZEROCOPY in (scope.get("extensions") or {}):
                    if not await self._zerocopy(send):
                        return
                else:
                    await self._chunks(send)
            await self._alongside_done()
            # An ordinary last message, so every middleware sees the response complete
            # (admission counts it answered, not dropped).
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            os.close(self.file.fd)
            await self._alongside_done()  # never left running on its own

    async def _alongside_done(self) -> None:
        if self.alongside is not None:
            await asyncio.shield(self.alongside)

    async def _zerocopy(self, send: Send) -> bool:
        """The body by ``sendfile``; False when the client left or stalled mid-body."""
        with os.fdopen(self.file.fd, "rb", buffering=0, closefd=False) as handle:
            try:
                await send(
                    {
                        "type": ZEROCOPY,
                        "file": handle,
                        "offset": self.start,
                        "count": self.length,
                        "more_body": True,
                    }
                )
            except BodyCut as exc:  # nobody to answer
                log.info("image_download_cut", reason=str(exc))
                return False
        return True

    async def _chunks(self, send: Send) -> None:
        position, remaining = self.start, self.length
        while remaining > 0:
            data = await anyio.to_thread.run_sync(
                os.pread, self.file.fd, min(CHUNK, remaining), position, limiter=_file_reads()
            )
            if not data:  # the file shrank under us: stop short, the client sees a short body
                raise OSError(f"image file ended {remaining} bytes early")
            position += len(data)
            remaining -= len(data)
            await send({"type": "http.response.body", "body": data, "more_body": True})
