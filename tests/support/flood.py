"""A bounded burst of concurrent HTTP requests from raw asyncio sockets.

Raw sockets rather than an HTTP client library: 1,000 concurrent httpx clients cost
more CPU than the daemon under test on a 2-core machine, which would measure the
client. Each request is one HTTP/1.1 exchange on its own connection
(``Connection: close``); the whole burst is bounded by ``deadline_s`` and every
socket is closed when it ends, answered or not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int  # 0: no answer (connect refused/reset, or still waiting at the deadline)
    seconds: float
    retry_after: str = ""
    code: str = ""  # the error code in a JSON error body
    error: str = ""


@dataclass
class Burst:
    answers: list[Answer] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)

    def slowest(self, status: int | None = None) -> float:
        times = [a.seconds for a in self.answers if status is None or a.status == status]
        return max(times, default=0.0)

    def summary(self) -> str:
        ok = self.statuses.get(200, 0) + self.statuses.get(201, 0)
        return (
            f"{len(self.answers)} requests in {self.wall_s:.2f}s: "
            f"{dict(sorted(self.statuses.items()))}, {ok / max(self.wall_s, 1e-9):.0f} served/s, "
            f"slowest answer {self.slowest():.2f}s"
        )


def _request(method: str, path: str, host: str, token: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _one(
    host: str, port: int, raw: bytes, deadline: float, start_gate: asyncio.Event
) -> Answer:
    await start_gate.wait()
    t0 = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(max(0.0, deadline - t0)):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw)
            await writer.drain()
            data = await reader.read()  # Connection: close, so EOF ends the answer
    except TimeoutError:
        return Answer(0, time.monotonic() - t0, error="no answer by the deadline")
    except OSError as exc:
        return Answer(0, time.monotonic() - t0, error=type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.monotonic() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Answer(0, elapsed, error=f"malformed answer {data[:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    code = ""
    if status >= 400:
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = ""
    return Answer(status, elapsed, headers.get("retry-after", ""), code)


async def burst_async(
    port: int,
    path: str,
    *,
    count: int,
    token: str = "",
    method: str = "GET",
    body: bytes | None = None,
    host: str = "127.0.0.1",
    deadline_s: float = 30.0,
) -> Burst:
    """``count`` concurrent requests, all released at once; each has until the deadline."""
    if count > 5000:
        raise ValueError("a burst is capped at 5,000 requests")
    raw = _request(method, path, host, token, body)
    gate = asyncio.Event()
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    tasks = [asyncio.create_task(_one(host, port, raw, deadline, gate)) for _ in range(count)]
    await asyncio.sleep(0)
    t0 = time.monotonic()
    gate.set()
    answers = await asyncio.gather(*tasks)
    return Burst(list(answers), time.monotonic() - t0)


def burst(port: int, path: str, **kwargs: object) -> Burst:
    return asyncio.run(burst_async(port, path, **kwargs))  # type: ignore[arg-type]
