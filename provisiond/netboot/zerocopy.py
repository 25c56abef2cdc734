"""uvicorn's HTTP/1.1 protocol (h11) plus the ASGI ``http.response.zerocopysend`` extension.

Why: serving a 100 MiB initrd to 50 clients, the event loop spent 59% of its time in
``transport.write`` copying 1 MiB chunks (read on threads) into sockets (py-spy), and
provisiond reached 0.63-0.79x nginx's throughput. Here the body never enters Python:
:class:`~provisiond.netboot.file_senders.FileSenders` threads hand it to the kernel
with ``os.sendfile``.

How, per response: the status line and headers go out through uvicorn as usual (the
request-id, admission and error middlewares see them). A zerocopysend message then
books its ``count`` bytes in h11's state machine with ``send_with_data_passthrough``
(h11's own hook for sendfile: it counts the bytes against ``Content-Length`` and
hands the placeholder back, with any chunk framing to write around it). Once the
transport's buffer is empty, reading is paused and the socket is corked (TCP_CORK,
nginx's ``tcp_nopush``: only full segments) while a sender thread sends the bytes.
A final empty ``http.response.body`` ends the response the ordinary way, so
keep-alive and pipelining go on as after any other response.

A client that leaves or stalls mid-body fails the send: the connection is aborted,
and the app's ``send`` raises :class:`BodyCut`, which the sender of the body catches.

It relies on these uvicorn internals (0.55, read from ``h11_impl``), exercised by the
tests against the installed uvicorn: ``H11Protocol.app`` (the app each request runs)
and ``H11Protocol.cycle`` with its ``scope``, ``conn``, ``transport``, ``flow``,
``disconnected``, ``response_started`` and ``response_complete``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, BinaryIO, ClassVar, cast

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.protocols.utils import is_ssl
from uvicorn.server import ServerState

from provisiond.netboot.file_senders import FileEnded, FileSenders, SendfileUnsupported

ZEROCOPY = "http.response.zerocopysend"
#: Bytes per read where ``sendfile`` cannot be used (see :class:`SendfileUnsupported`).
CHUNK = 1 << 20


class BodyCut(ConnectionError):
    """The body could not be sent in full (the client left or stalled): connection aborted."""


class _Span:
    """Stands in for ``count`` body bytes in h11's books; the kernel sends them."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class ZeroCopyH11Protocol(H11Protocol):
    """One instance per connection; make the class with :func:`zero_copy_protocol`."""

    senders: ClassVar[FileSenders]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._inner: ASGIApp = cast(ASGIApp, self.app)
        self.app = cast(Any, self._with_zerocopy)

    async def _with_zerocopy(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn makes a request's cycle just before it starts the request's task,
        # and the next request's cycle only once this response is complete.
        cycle = self.cycle
        if (
            scope["type"] != "http"
            or not isinstance(cycle, RequestResponseCycle)
            or cast(Scope, cycle.scope) is not scope
            or is_ssl(self.transport)
        ):
            await self._inner(scope, receive, send)
            return
        scope["extensions"] = {**(scope.get("extensions") or {}), ZEROCOPY: {}}

        async def send_zerocopy(message: Message) -> None:
            if message["type"] == ZEROCOPY:
                await self._send_file(cycle, message, send)
            else:
                await send(message)

        await self._inner(scope, receive, send_zerocopy)

    async def _send_file(self, cycle: RequestResponseCycle, message: Message, send: Send) -> None:
        if cycle.disconnected:
            raise BodyCut("the client has gone")
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"{ZEROCOPY} is only valid inside a response body")
        file: BinaryIO = message["file"]
        offset = int(message.get("offset") or 0)
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if count > 0 and cycle.scope["method"] != "HEAD":
            span = cast(bytes, _Span(count))
            pieces = cycle.conn.send_with_data_passthrough(h11.Data(data=span))
            for piece in pieces or ():
                if piece is span:
                    await self._sendfile(cycle, file.fileno(), offset, count)
                else:  # chunked framing around the span
                    cycle.transport.write(piece)
        if not message.get("more_body", False):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _sendfile(
        self, cycle: RequestResponseCycle, file_fd: int, offset: int, count: int
    ) -> None:
        transport = cycle.transport
        try:
            await _drained(cycle)
            if transport.is_closing():
                raise ConnectionResetError("the connection is closing")
            sock = transport.get_extra_info("socket")
            reading = transport.is_reading()
            transport.pause_reading()  # nothing else touches the socket meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            try:
                await self.senders.send(sock.fileno(), file_fd, offset, count)
            except SendfileUnsupported:
                await _write_chunks(cycle, file_fd, offset, count)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # push the last segment
        except OSError as exc:  # the peer left, no headway (TimeoutError), file ended
            # The body is cut short, so the connection cannot carry another response.
            cycle.disconnected = True
            transport.abort()
            raise BodyCut(f"{count} bytes from offset {offset} not sent: {exc!r}") from exc
        if reading:
            transport.resume_reading()


async def _write_chunks(cycle: RequestResponseCycle, file_fd: int, offset: int, count: int) -> None:
    """The bytes through the transport, read on a thread: for files ``sendfile`` refuses."""
    loop = asyncio.get_running_loop()
    while count > 0:
        data = await loop.run_in_executor(None, os.pread, file_fd, min(CHUNK, count), offset)
        if not data:
            raise FileEnded(f"the file ended {count} bytes early")
        cycle.transport.write(data)
        offset += len(data)
        count -= len(data)
        if cycle.flow.write_paused:
            await cycle.flow.drain()
        if cycle.disconnected or cycle.transport.is_closing():
            raise ConnectionResetError("the client has gone")


async def _drained(cycle: RequestResponseCycle) -> None:
    """Wait until the transport has written everything it buffered (the headers)."""
    transport = cycle.transport
    if not transport.get_write_buffer_size():
        return
    transport.set_write_buffer_limits(high=0)  # pauses uvicorn's flow control until empty
    try:
        await cycle.flow.drain()
    finally:
        transport.set_write_buffer_limits()


def zero_copy_protocol(senders: FileSenders) -> type[ZeroCopyH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to ``senders``."""
    return type("ZeroCopyH11Protocol", (ZeroCopyH11Protocol,), {"senders": senders})
