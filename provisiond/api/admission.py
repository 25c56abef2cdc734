"""Admission: a bound on requests in flight per class, body limits, and clients gone.

Under a flood the daemon answers what it can and refuses the rest at once, instead of
queueing work until every thread and connection is taken and nothing answers (a burst
of a few hundred ``GET /api/v1/machines`` used to stall the daemon, ``/healthz`` and
the scheduler included, for minutes).

Every HTTP request is put in a class, and each class has its own bound:

========  =========================================================  ===============
class     requests                                                   lane
========  =========================================================  ===============
api       ``/api/v1/...`` and anything else not listed below          api
watch     an allocation's long-poll (``GET /api/v1/allocations/{id}``   api
          with ``wait`` > 0), its event stream (``.../events``) and a
          streamed discovery (``?stream=true``), the console's live
          stream (``/ui/live``): they hold a slot for
          minutes, so they are counted apart and cannot starve
          ordinary calls
boot      iPXE scripts, seeds, the OS callback, the agent's reports   boot
files     image downloads (kernels, initrds, disk images)             boot
health    ``/healthz`` and ``/metrics``                               system
========  =========================================================  ===============

A request over its class's bound waits at most ``queue_wait_s`` (0.5 s) in a bounded
FIFO for a slot, or gets ``503`` with ``Retry-After`` and the usual error body at once
when that queue is full too; nothing is read or parsed before admission. The lane
(:mod:`provisiond.lanes`) decides which threads and which database pool the admitted
request uses.

Bodies: a request whose ``Content-Length`` is over its route's limit gets ``413``
unread; a body without a length (chunked) is counted as it streams and refused the
moment it passes the limit, so no route buffers more than its limit.

Clients that left: a GET's connection is watched while the request is in flight. When
the client disconnects before the answer, ``scope["state"]["client_gone"]`` (an
:class:`asyncio.Event`) is set and the app's ``receive`` reports the disconnect. Work
checks it at safe points (:func:`provisiond.api.deps` before a session is opened, a
long-poll between waits) and stops: nothing is cancelled under a thread that holds a
database session.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisiond import lanes
from provisiond.errors import BodyTooLarge
from provisiond.inventory.plan import MAX_BYTES as INVENTORY_MAX_BYTES
from provisiond.lanes import Lane
from provisiond.metrics import Metrics

KiB = 1024
MiB = 1024 * KiB

#: Body limits by path prefix, first match wins; DEFAULT_BODY_LIMIT otherwise.
BODY_LIMITS: tuple[tuple[str, int], ...] = (
    ("/api/v1/inventory/", INVENTORY_MAX_BYTES),  # 8 MiB
    ("/api/v1/agent/", 256 * KiB),
    ("/boot/callback/", 16 * KiB),
    ("/ui/", 16 * KiB),  # the console's forms: a token, a reason, a form token
)
DEFAULT_BODY_LIMIT = 1 * MiB

_BOOT_PREFIXES = ("/boot/", "/meta/", "/api/v1/agent/")
_HEALTH_PATHS = ("/healthz", "/metrics")


@dataclass(frozen=True)
class Limits:
    """Requests in flight per class (see the module docstring)."""

    api: int = 64
    watch: int = 256
    boot: int = 256
    files: int = 1024
    health: int = 32
    #: Seconds a refused client is told to wait.
    retry_after_s: int = 1
    #: A full api or boot class lets up to its own bound of requests wait this long
    #: for a slot (first come, first served) before they are refused: a burst is
    #: served as far as it can be within a fraction of a second, and the wait is
    #: short enough that no client times out in it. Long-polls, streams and
    #: downloads hold a slot for minutes, so waiting for one is pointless.
    queue_wait_s: float = 0.5


class _Gate:
    """``bound`` slots and a FIFO of at most ``queue`` waiters, on the loop's thread."""

    def __init__(self, bound: int, queue: int, wait_s: float) -> None:
        self.bound, self.queue, self.wait_s = bound, queue, wait_s
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> bool:
        if self.active < self.bound and not self.waiters:
            self.active += 1
            return True
        if len(self.waiters) >= self.queue or self.wait_s <= 0:
            return False
        slot = asyncio.get_running_loop().create_future()
        self.waiters.append(slot)
        try:
            await asyncio.wait({slot}, timeout=self.wait_s)
        finally:
            if not slot.done():
                slot.cancel()
                self.waiters.remove(slot)
        return not slot.cancelled()  # a slot handed over by leave() is ours

    def leave(self) -> None:
        while self.waiters:  # hand the slot straight to the oldest waiter
            slot = self.waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.active -= 1


def classify(scope: Scope) -> tuple[str, Lane]:
    """The request's class and lane, from its path and query alone (no I/O)."""
    path: str = scope.get("path", "")
    if path in _HEALTH_PATHS:
        return "health", Lane.SYSTEM
    if path.startswith("/images/"):
        return "files", Lane.BOOT
    if path.startswith(_BOOT_PREFIXES):
        return "boot", Lane.BOOT
    # Only the routes that really hold a request open are watches: a client must not
    # get a watch slot for an ordinary call by adding a header or a query parameter.
    if _ALLOCATION.fullmatch(path):
        return ("watch" if _query_says(scope, "wait", _nonzero) else "api"), Lane.API
    if (
        path == "/ui/live"
        or _ALLOCATION_EVENTS.fullmatch(path)
        or (path == "/api/v1/discovery" and _query_says(scope, "stream", _true))
    ):
        return "watch", Lane.API
    return "api", Lane.API


_ALLOCATION = re.compile(r"/api/v1/allocations/[^/]+")
_ALLOCATION_EVENTS = re.compile(r"/api/v1/allocations/[^/]+/events")


def _nonzero(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False  # FastAPI answers 422 for it


def _true(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def _query_says(scope: Scope, key: str, test: Callable[[str], bool]) -> bool:
    query: bytes = scope.get("query_string", b"")
    if key.encode() + b"=" not in query:
        return False
    return any(k == key and test(v) for k, v in parse_qsl(query.decode("latin-1")))


def body_limit(path: str) -> int:
    for prefix, limit in BODY_LIMITS:
        if path.startswith(prefix):
            return limit
    return DEFAULT_BODY_LIMIT


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this route's limit of {limit} bytes",
        hint="send a smaller body; an inventory over 8 MiB can be split by rack",
    )


async def _send_error(send: Send, status: int, body: dict[str, Any], headers: list[Any]) -> None:
    payload = json.dumps({"error": body}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def client_gone(scope: Scope) -> asyncio.Event | None:
    """The request's "client disconnected" event, when admission watches it."""
    state = scope.get("state") or {}
    event = state.get("client_gone")
    return event if isinstance(event, asyncio.Event) else None


class Admission:
    """The ASGI middleware: counts, refuses, limits bodies and watches for gone clients.

    Counting is plain integers on the event loop's thread (no locks needed): a request
    is admitted and released by the same coroutine."""

    def __init__(self, app: ASGIApp, limits: Limits, metrics: Metrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        wait = limits.queue_wait_s
        self.gates = {
            "api": _Gate(limits.api, limits.api, wait),
            "watch": _Gate(limits.watch, 0, 0),
            "boot": _Gate(limits.boot, limits.boot, wait),
            "files": _Gate(limits.files, 0, 0),
            "health": _Gate(limits.health, 0, 0),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind, lane = classify(scope)
        gate = self.gates[kind]
        if not await gate.enter():
            await self._refuse(kind, lane, send)
            return
        gauge = self.metrics.requests_in_flight.labels(lane.value, kind)
        gauge.inc()
        lanes.enter(lane)  # this request's task only (uvicorn runs each in its own)
        try:
            await self._admitted(scope, receive, send, lane)
        finally:
            gate.leave()
            gauge.dec()

    async def _refuse(self, kind: str, lane: Lane, send: Send) -> None:
        self.metrics.requests_refused.labels(lane.value, kind).inc()
        retry = self.limits.retry_after_s * (5 if kind == "watch" else 1)
        await _send_error(
            send,
            503,
            {
                "code": "overloaded",
                "message": f"the daemon is at its limit of {self.gates[kind].bound} {kind} "
                "requests in flight",
                "hint": f"retry after {retry} s (the Retry-After header)",
            },
            [(b"retry-after", str(retry).encode()), (b"connection", b"close")],
        )

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, lane: Lane) -> None:
        headers = dict(scope.get("headers") or ())
        limit = body_limit(scope.get("path", ""))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            err = _too_large(limit)
            await _send_error(send, 413, err.to_dict(), [(b"connection", b"close")])
            return
        has_body = bool(declared and declared != b"0") or b"transfer-encoding" in headers
        if scope.get("method") in ("GET", "HEAD") and not has_body:
            await self._watching(scope, receive, send, lane)
            return
        received = 0
        refused = False

        async def bounded_receive() -> Message:
            # Past the limit the 413 is sent from here, and the app is told the client
            # left: FastAPI turns any error raised while it reads a body into its own
            # 400, and nothing it answers after this point is sent.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    scope.setdefault("state", {})["body_refused"] = True
                    err = _too_large(limit)
                    await _send_error(send, 413, err.to_dict(), [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, bounded_receive, guarded_send)

    async def _watching(self, scope: Scope, receive: Receive, send: Send, lane: Lane) -> None:
        """Run a body-less request while watching its connection for a disconnect."""
        first = await receive()  # the (empty) request body, already parsed
        gone = asyncio.Event()
        scope.setdefault("state", {})["client_gone"] = gone
        answered = False

        async def watch() -> None:
            message = await receive()  # returns at disconnect or once the response is done
            if message["type"] == "http.disconnect" and not answered:
                gone.set()
                self.metrics.requests_dropped.labels(lane.value).inc()

        pending: list[Message] = [first]

        async def app_receive() -> Message:
            if pending:
                return pending.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def app_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, app_receive, app_send)
        finally:
            watcher.cancel()
