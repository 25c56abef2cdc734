"""10,000 malformed or hostile requests against the boot routes of a real daemon.

A real ``provisiond serve`` (uvicorn, h11) on a free loopback port, with one small
image in its store and hostile plants beside it: a symlink inside the image folder
pointing at a marker file outside the store, a symlinked "image folder", a FIFO
(opening one for reading would block until a writer comes), and the store's own
sha256 manifest. Requests are written as raw bytes over a fresh TCP connection each
(``Connection: close``), so nothing is normalised by a client library: bad MACs,
``..`` in every encoding, absolute targets, NUL and raw UTF-8 bytes, junk and
oversized callback bodies, 64 KiB header values, hundreds of headers, junk ``Host``
headers, bad ``Range`` headers, odd methods and broken request lines.

Asserted: no 5xx and no dropped connection; a 2xx/3xx only where the case says the
request is legitimately valid (the few HEAD/GET/Range requests on the real image,
the entry script, a handful of well-formed MACs); no body ever contains the marker,
the daemon's secret key or ``/etc/passwd``; the daemon is alive and healthy after,
and its log holds no unhandled exception. The run is seeded (printed) and bounded
by 16 workers and a hard time limit; counts by status are printed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httpx
import pytest

from provisiond.db import Database
from provisiond.inventory.images import add_image
from provisiond.netboot.images import MANIFEST, ImageStore
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow

TOTAL = 10_000
WORKERS = 16
RUN_LIMIT_S = 150.0
REQUEST_TIMEOUT_S = 15.0
#: How long to wait on a request the server may rightly never answer.
HANG_S = 2.0
IMAGE = "small"
#: Images whose manifest the fixture replaces with a FIFO / a 60,000-deep JSON array.
DAMAGED = ("fifo-manifest", "deep-manifest")
KERNEL = "vmlinuz"
KERNEL_BYTES = random.Random(7).randbytes(4096)
MARKER = b"PVD-FUZZ-OUTSIDE-" + secrets.token_hex(8).encode()
PASSWD = b"root:x:0:0"


@dataclass(frozen=True)
class Case:
    kind: str
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    #: A 2xx/3xx is acceptable only for these (legitimately valid requests).
    valid: bool = False
    #: Send ``body`` as one chunk with ``transfer-encoding: chunked`` (no length).
    chunked: bool = False
    #: Raw bytes only: the server may rightly wait for more and never answer.
    may_hang: bool = False

    @property
    def head(self) -> bool:
        first = self.target if self.kind == "raw" else self.method
        return first.startswith(b"HEAD")

    def wire(self) -> bytes:
        lines = [self.method + b" " + self.target + b" HTTP/1.1"]
        names = {k.lower() for k, _ in self.headers}
        if b"host" not in names:
            lines.append(b"Host: 127.0.0.1")
        lines += [k + b": " + v for k, v in self.headers]
        lines.append(b"Connection: close")
        body = self.body
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.body), self.body) if body else b"0\r\n\r\n"
        elif (self.body or self.method == b"POST") and b"content-length" not in names:
            lines.append(b"Content-Length: %d" % len(self.body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Result:
    case: Case
    status: int | None
    body: bytes
    error: str = ""


@dataclass
class Plan:
    rng: random.Random
    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> None:
        self.cases.append(case)


# --- hostile inputs -------------------------------------------------------------------

TRAVERSALS = [
    b"..", b"%2e%2e", b"%2E%2E", b".%2e", b"%2e.", b"%252e%252e", b"..%2f..%2f..%2fetc%2fpasswd",
    b"..%2F..%2Fsecret.key", b"%2e%2e%2f%2e%2e%2fsecret.key", b"..%5c..%5csecret.key",
    b"..\\..\\secret.key", b"%c0%ae%c0%ae", b"%uff0e%uff0e", b".", b"%2e", b"...", b".sha256.json",
    b"%2esha256.json", b"%2fetc%2fpasswd", b"%252fetc%252fpasswd", b"etc/passwd", b"/etc/passwd",
    b"evil", b"fifo", b"vmlinuz%00", b"vmlinuz%00.txt", b"vmlinuz%2f..", b"vmlinuz/..",
    b"vmlinuz;.txt", b"vmlinuz?x=../..", b"vmlinuz#../..", b"~", b"%7e", b"*", b"$HOME",
    b"%24%7bIFS%7d", b"con", b"nul", b"-", b"+",
]  # fmt: skip
JUNK_PIECES = [
    b"zz", b"%00", b"%0a", b"%0d%0a", b"%ff", b"%c3%a9", b"\xc3\xa9", b"\xff", b"%", b"%%",
    b"%zz", b"..", b"%2f", b"%2e", b";", b",", b"=", b"'", b'"', b"<", b">", b"{", b"}", b"|",
    b"\\", b"^", b"`", b"$", b"(", b")", b"!", b"@", b"*", b"~", b" ", b"\t", b"%20", b"%09",
    b"\xe2\x80\xae", b"%e2%80%ae", b"\xf0\x9f\x92\xa9", b"%f0%9f%92%a9", b"null", b"-1",
]  # fmt: skip
HOSTS = [
    b"[::1", b"::1]", b"[zz::1]:80", b"a b", b"127.0.0.1:99999999", b"127.0.0.1:-1", b"@",
    b"user@127.0.0.1", b"127.0.0.1/../..", b"%00", b"\xc3\xa9", b"", b"[", b"]", b"::",
    b"x" * 300, b"127.0.0.1:", b"127.0.0.1:abc", b"http://evil", b"evil.example#frag",
]  # fmt: skip
RANGES = [
    b"bytes=abc", b"bytes=5-1", b"bytes=-0", b"bytes=999999-", b"bytes=0-0,1-1", b"bytes=--1",
    b"bytes=-", b"bytes=", b"bits=0-1", b"bytes=0-99999999999999999999999999999999",
    b"bytes=99999999999999999999999999999-", b"bytes=-99999999999999999999999", b"bytes=1-2-3",
    b"bytes = 0 - 5", b"bytes=\xc3\xa9-1", b"bytes=0x10-0x20", b"bytes=+1-+2", b"bytes=0-4095",
    b"bytes=4095-", b"bytes=4096-", b"bytes=-4096", b"bytes=-4097", b"bytes=" + b"0" * 300 + b"-",
    b"bytes=0-1," * 100, b"bytes=1e3-2e3", b"bytes=\t0-1",
]  # fmt: skip
METHODS = [b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT", b"FOO", b"get",
           b"G\xc3\xa9T", b"GET\x00", b"X" * 300]  # fmt: skip
#: Broken request lines and framing, sent as they are: (bytes, valid, may_hang).
#: ``valid``: a lenient parse of it is a real request (h11 accepts bare LF lines,
#: folded header lines and any HTTP/1.x-looking version; a GET route need not read a
#: body). ``may_hang``: the server rightly waits for bytes
#: that never come (a body shorter than its Content-Length), so silence is correct.
RAW: list[tuple[bytes, bool, bool]] = [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", False, False),
    (b"GET\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/9.9\r\nHost: x\r\n\r\n", True, False),
    (b"GET /boot/ipxe\r\n\r\n", False, False),
    (b"GET  /boot/ipxe  HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n", True, False),
    (b"GET /boot/ipxe HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", False, False),
    (b"POST /boot/callback/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", False, False),
    (b"POST /boot/callback/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", False, False),
    (b"POST /boot/callback/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False, False),
    (b"POST /boot/callback/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nabc\r\n0\r\n\r\n", False, False),
    (b"POST /boot/callback/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", False, True),
    (b"GET /images/small/vmlinuz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
     True, False),
    (b"\r\n\r\n\r\n", False, True),
    (b"GET http://127.0.0.1/images/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    (b"GET //images/small/vmlinuz/../../../secret.key HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
    (b"GET /boot/ipxe HTTP/1.1\nHost: x\n\n", True, False),
]  # fmt: skip


def junk(rng: random.Random, low: int = 1, high: int = 12) -> bytes:
    return b"".join(rng.choice(JUNK_PIECES) for _ in range(rng.randint(low, high)))


def bad_mac(rng: random.Random) -> bytes:
    hexes = [b"%02x" % rng.randrange(256) for _ in range(6)]
    choice = rng.randrange(10)
    if choice == 0:
        return b"zz:zz"
    if choice == 1:  # overlong
        return b"aa:" * rng.randint(22, 2000) + b"aa"
    if choice == 2:  # five or seven octets
        return b":".join(hexes[:5] if rng.random() < 0.5 else [*hexes, b"01"])
    if choice == 3:  # one octet replaced by junk
        hexes[rng.randrange(6)] = junk(rng, 1, 3)
        return b":".join(hexes)
    if choice == 4:  # a valid MAC with junk after it (or before)
        mac = b":".join(hexes)
        return mac + junk(rng) if rng.random() < 0.5 else junk(rng) + mac
    if choice == 5:
        return b":".join(hexes).replace(b":", rng.choice([b"%00", b"%0a", b"/", b"%2f", b" "]))
    if choice == 6:
        return rng.choice(TRAVERSALS)
    if choice == 7:  # non-hex letters in the right shape
        return b":".join(
            b"%c%c" % (rng.choice(b"ghijkxyzGZ"), rng.choice(b"0123456789")) for _ in hexes
        )
    if choice == 8:
        return b""
    return junk(rng)


def build_plan(seed: int) -> list[Case]:
    rng = random.Random(seed)
    plan = Plan(rng)
    good = f"/images/{IMAGE}/{KERNEL}".encode()

    # The few legitimately valid requests (they must succeed, which proves the store works).
    for _ in range(10):
        plan.add(Case("valid-head", b"HEAD", good, valid=True))
        plan.add(Case("valid-get", b"GET", good, valid=True))
        plan.add(Case("valid-entry", b"GET", b"/boot/ipxe", valid=True))
    for name in DAMAGED:
        for method in (b"GET", b"HEAD"):
            path = f"/images/{name}/{KERNEL}".encode()
            plan.add(Case("valid-damaged", method, path, valid=True))
    for rng_header in RANGES:
        for method in (b"GET", b"HEAD"):
            plan.add(Case("range", method, good, ((b"Range", rng_header),), valid=True))
    stale = ((b"Range", b"bytes=0-9"), (b"If-Range", b"junk"))  # stale copy: whole file
    plan.add(Case("range", b"GET", good, stale, valid=True))
    for k in range(3):  # well-formed unknown MACs: enrolled, as PXE does
        mac = f"52:54:00:fe:ed:{k:02x}".encode()
        plan.add(Case("valid-mac", b"GET", b"/boot/" + mac + b".ipxe", valid=True))

    generators: list[tuple[int, Callable[[], Case]]] = [
        (
            30,
            lambda: Case("mac", rng.choice((b"GET", b"HEAD")), b"/boot/" + bad_mac(rng) + b".ipxe"),
        ),
        (25, lambda: image_case(rng)),
        (12, lambda: meta_case(rng)),
        (15, lambda: callback_case(rng)),
        (6, lambda: header_case(rng)),
        (5, lambda: host_case(rng)),
        (4, lambda: method_case(rng)),
        (3, lambda: raw_case(rng)),
    ]
    weights = [w for w, _ in generators]
    while len(plan.cases) < TOTAL:
        _, make = rng.choices(generators, weights)[0]
        plan.add(make())
    rng.shuffle(plan.cases)
    return plan.cases


def image_case(rng: random.Random) -> Case:
    method = rng.choice((b"GET", b"HEAD"))
    t = rng.choice(TRAVERSALS)
    shapes = [
        b"/images/" + t + b"/" + t,
        b"/images/" + IMAGE.encode() + b"/" + t,
        b"/images/" + t + b"/" + KERNEL.encode(),
        b"/images/" + IMAGE.encode() + b"/" + t + b"/" + t + b"/secret.key",
        b"/images/evildir/outside.txt",
        b"/images/" + IMAGE.encode() + b"/evil",
        b"/images/" + IMAGE.encode() + b"/fifo",
        b"/images/" + IMAGE.encode() + b"/" + junk(rng),
        b"/images/" + junk(rng) + b"/" + KERNEL.encode(),
        b"/images/" + b"a" * rng.randint(129, 5000) + b"/" + KERNEL.encode(),
        b"/images//" + t,
        b"/images/" + IMAGE.encode() + b"//etc/passwd",
        b"/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/images/" + IMAGE.encode() + b"/%2e%2e%2f%2e%2e%2fsecret.key",
        b"/images/" + IMAGE.encode() + b"/" + KERNEL.encode() + b"/" + t,
    ]
    target = rng.choice(shapes)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if rng.random() < 0.2:
        headers = ((b"Range", rng.choice(RANGES)),)
    # "vmlinuz?x=../.." is the real file with a query string: valid, and served.
    valid = target.split(b"?", 1)[0] == b"/images/" + IMAGE.encode() + b"/" + KERNEL.encode()
    return Case("image", method, target, headers, valid=valid)


def meta_case(rng: random.Random) -> Case:
    ident = rng.choice(
        [str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode(), junk(rng),
         rng.choice(TRAVERSALS), b"0" * rng.randint(40, 4000), b"%00", b"\xff\xfe"]
    )  # fmt: skip
    file = rng.choice(
        [b"meta-data", b"user-data", b"vendor-data", b"ks.cfg", b"preseed.cfg",
         rng.choice(TRAVERSALS), junk(rng), b"meta-data%00", b"user-data/../../secret.key"]
    )  # fmt: skip
    return Case("meta", rng.choice((b"GET", b"HEAD")), b"/meta/" + ident + b"/" + file)


def callback_case(rng: random.Random) -> Case:
    ident = rng.choice(
        [str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode(), junk(rng), b"x" * 3000]
    )
    token = rng.choice(
        [b"", b"?token=", b"?token=" + secrets.token_hex(16).encode(), b"?token=" + junk(rng),
         b"?token=" + b"A" * 5000, b"?token=a&token=b", b"?token=%00%ff", b"?" + junk(rng)]
    )  # fmt: skip
    json_type = (b"Content-Type", b"application/json")
    form_type = (b"Content-Type", b"application/x-www-form-urlencoded")
    depth = rng.randint(500, 8000)
    bodies: list[tuple[bytes, tuple[tuple[bytes, bytes], ...], bool]] = [
        (rng.randbytes(rng.randint(0, 2000)), (), False),
        (b"{not json", (json_type,), False),
        (b"[1, 2, 3]", (json_type,), False),
        (b'"a string"', (json_type,), False),
        (b"null", (json_type,), False),
        (b"[" * depth + b"]" * depth, (json_type,), False),
        (b'{"a":' * (depth // 5) + b"1" + b"}" * (depth // 5), (json_type,), False),
        (b'{"pub_key_ed25519": ' + b"9" * 5000 + b"}", (json_type,), False),
        (b'{"pub_key_ed25519": "\\ud800"}', (json_type,), False),
        (b"&".join(b"k%d=v" % i for i in range(rng.randint(33, 2000))), (form_type,), False),
        (b"pub_key_ed25519=" + junk(rng) + b"&instance_id=" + junk(rng), (form_type,), False),
        (b"=&=&&==%%%&\xff\xfe", (form_type,), False),
        (b"x" * rng.choice((16 * 1024 + 1, 64 * 1024, 1024 * 1024)), (), False),
        (b"y" * rng.choice((16 * 1024 + 1, 200 * 1024)), (), True),
        (
            b'{"pub_key_ed25519": "ssh-ed25519 AAAA"}',
            (json_type, (b"Content-Length", b"99999999")),
            False,
        ),
    ]
    body, headers, chunked = rng.choice(bodies)
    target = b"/boot/callback/" + ident + token
    return Case("callback", b"POST", target, headers, body, chunked=chunked)


def header_case(rng: random.Random) -> Case:
    target = rng.choice([b"/boot/zz.ipxe", b"/images/" + IMAGE.encode() + b"/..", b"/meta/x/y"])
    shape = rng.randrange(4)
    if shape == 0:  # one 64 KiB value
        headers: tuple[tuple[bytes, bytes], ...] = ((b"X-Big", b"a" * 65536),)
    elif shape == 1:  # many headers
        headers = tuple((b"X-H%d" % i, b"v") for i in range(rng.randint(100, 1000)))
    elif shape == 2:  # a huge header name
        headers = ((b"X" * rng.randint(1000, 70000), b"v"),)
    else:  # a huge cookie, as a broken client might send
        headers = ((b"Cookie", b"; ".join(b"c%d=%s" % (i, b"z" * 100) for i in range(700))),)
    return Case("headers", b"GET", target, headers)


def host_case(rng: random.Random) -> Case:
    target = rng.choice([b"/boot/ipxe", b"/boot/52:54:00:fe:ed:00.ipxe", b"/boot/zz.ipxe"])
    valid = target != b"/boot/zz.ipxe"  # a junk Host may still get the script: fine
    return Case("host", b"GET", target, ((b"Host", rng.choice(HOSTS)),), valid=valid)


def raw_case(rng: random.Random) -> Case:
    wire, valid, may_hang = rng.choice(RAW)
    return Case("raw", b"", wire, valid=valid, may_hang=may_hang)


def method_case(rng: random.Random) -> Case:
    target = rng.choice(
        [b"/boot/ipxe", b"/boot/52:54:00:fe:ed:00.ipxe", b"/images/small/vmlinuz",
         b"/meta/x/meta-data", b"/boot/callback/x"]
    )  # fmt: skip
    return Case("method", rng.choice(METHODS), target)


# --- the raw client -------------------------------------------------------------------


async def send(port: int, case: Case) -> Result:
    wire = case.target if case.kind == "raw" else case.wire()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError) as exc:
        return Result(case, None, b"", f"connect: {exc!r}")
    try:
        try:
            writer.write(wire)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass  # the server may answer (and close) before reading an oversized request
        raw = b""
        deadline = time.monotonic() + (HANG_S if case.may_hang else REQUEST_TIMEOUT_S)
        while not _complete(raw, case.head):
            left = deadline - time.monotonic()
            if left <= 0:
                return Result(case, _status(raw), raw, "timeout")
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except ConnectionError as exc:
                return Result(case, _status(raw), raw, "" if raw else f"reset: {exc!r}")
            except TimeoutError:
                continue
            if not data:
                break
            raw += data
        return Result(case, _status(raw), raw, "" if raw else "closed without a response")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2)


def _complete(raw: bytes, head: bool) -> bool:
    """A whole response is in ``raw`` (framed by Content-Length or chunked encoding)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    status = _status(raw) or 0
    if head or status in (204, 304) or status < 200:
        return True
    fields = dict(
        line.split(b":", 1) for line in raw[:end].lower().split(b"\r\n")[1:] if b":" in line
    )
    body = raw[end + 4 :]
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"].strip())
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        return body.endswith(b"0\r\n\r\n")
    return False  # framed by the server closing the connection


def _status(raw: bytes) -> int | None:
    head = raw.split(b"\r\n", 1)[0].split()
    if len(head) >= 2 and head[0].startswith(b"HTTP/1.") and head[1].isdigit():
        return int(head[1])
    return None


async def run_all(port: int, cases: list[Case]) -> list[Result]:
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)
    results: list[Result] = []

    async def worker() -> None:
        while True:
            try:
                case = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await send(port, case))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), RUN_LIMIT_S)
    return results


# --- the test -------------------------------------------------------------------------


def _unexpected_ok(r: Result) -> bool:
    """A 2xx/3xx for a request that is not legitimately valid.

    One 3xx is tolerated: Starlette's trailing-slash redirect (``/boot/callback/x%2f``
    -> ``/boot/callback/x``), which stays on the requested host and path; reported.
    """
    if r.status is None or r.status >= 400 or r.case.valid:
        return False
    if r.status in (307, 308):
        path = unquote_to_bytes(r.case.target.split(b"?", 1)[0])
        location = _header(r.body, b"location")
        return not (path.endswith(b"/") and location.startswith(b"http://127.0.0.1/"))
    return True


def _header(raw: bytes, name: bytes) -> bytes:
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data")
    d.data_dir.mkdir(parents=True)
    d.prepare()
    src = tmp_path / "src"
    src.mkdir()
    (src / KERNEL).write_bytes(KERNEL_BYTES)
    (src / "initrd.img").write_bytes(b"initrd")
    files = {"kernel": src / KERNEL, "initrd": src / "initrd.img"}
    added = cli("images", "add", IMAGE, "--kernel", str(files["kernel"]),
                "--initrd", str(files["initrd"]), "--kind", "live", env=d.env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    store = d.data_dir / "images"
    db = Database(f"sqlite:///{d.data_dir.resolve() / 'provisiond.db'}")
    try:  # the rest in-process: a CLI run per image costs an interpreter start each
        with db.transaction() as session:
            for name in ("inspect", *DAMAGED):
                add_image(session, ImageStore(store), name=name, files=files, actor="test")
    finally:
        db.dispose()
    # Hostile plants: outside the store a marker; inside it, ways that would lead there.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.txt").write_bytes(MARKER)
    (outside / "secret.key").write_bytes(MARKER)
    (store / IMAGE / "evil").symlink_to(outside / "outside.txt")
    (store / "evildir").symlink_to(outside)
    os.mkfifo(store / IMAGE / "fifo")
    # Damaged manifests must cost only the strong ETag, never the daemon.
    (store / "fifo-manifest" / MANIFEST).unlink()
    os.mkfifo(store / "fifo-manifest" / MANIFEST)
    (store / "deep-manifest" / MANIFEST).write_text("[" * 60000)
    (d.data_dir / "marker.txt").write_bytes(MARKER)
    try:
        d.start(timeout=30)
        yield d
    finally:
        d.stop(signal.SIGTERM)


def test_ten_thousand_hostile_boot_requests(daemon: Daemon) -> None:
    seed = int(os.environ.get("PROVISIOND_FUZZ_SEED", "0")) or secrets.randbits(32)
    print(f"\nboot fuzz seed {seed} (PROVISIOND_FUZZ_SEED={seed} reproduces it)")
    secret_key = (daemon.data_dir / "secret.key").read_bytes().strip()
    cases = build_plan(seed)
    assert len(cases) == TOTAL

    started = time.monotonic()
    results = asyncio.run(run_all(daemon.port, cases))
    elapsed = time.monotonic() - started
    assert len(results) == TOTAL

    by_status = collections.Counter(str(r.status) for r in results)
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        by_kind[r.case.kind][str(r.status)] += 1
    print(f"{TOTAL} requests in {elapsed:.1f}s ({TOTAL / elapsed:.0f}/s), {WORKERS} workers")
    print("by status:", json.dumps(dict(sorted(by_status.items()))))
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:12} {json.dumps(dict(sorted(counts.items())))}")

    def show(rs: list[Result]) -> str:
        return "\n".join(
            f"{r.case.kind} {r.case.method[:20]!r} {r.case.target[:120]!r} "
            f"headers={[(k[:20], v[:40]) for k, v in r.case.headers][:3]} -> {r.status} "
            f"{r.error} {r.body[:300]!r}"
            for r in rs[:10]
        )

    server_errors = [r for r in results if r.status is not None and r.status >= 500]
    assert not server_errors, show(server_errors)
    unanswered = [r for r in results if r.status is None and not r.case.may_hang]
    assert not unanswered, show(unanswered)
    unexpected_ok = [r for r in results if _unexpected_ok(r)]
    assert not unexpected_ok, show(unexpected_ok)
    leaked = [r for r in results if MARKER in r.body or secret_key in r.body or PASSWD in r.body]
    assert not leaked, show(leaked)

    # The deliberately valid requests did work: the store serves, the routes exist.
    heads = [r for r in results if r.case.kind == "valid-head"]
    assert all(r.status == 200 for r in heads), show(heads)
    assert all(b"content-length: %d" % len(KERNEL_BYTES) in r.body.lower() for r in heads)
    gets = [r for r in results if r.case.kind == "valid-get"]
    assert all(r.status == 200 and r.body.endswith(KERNEL_BYTES) for r in gets), show(gets)
    damaged = [r for r in results if r.case.kind == "valid-damaged"]
    assert all(r.status == 200 and b'etag: w/"' in r.body.lower() for r in damaged), show(damaged)
    entries = [r for r in results if r.case.kind == "valid-entry"]
    assert all(r.status == 200 and b"#!ipxe" in r.body for r in entries), show(entries)
    ranged = {
        r.case.headers[0][1]: r
        for r in results
        if r.case.kind == "range" and r.case.method == b"GET"
    }
    assert ranged[b"bytes=0-4095"].status == 206
    assert ranged[b"bytes=4096-"].status == 416
    assert ranged[b"bytes=abc"].status == 200

    # Still alive, healthy and answering; nothing unhandled in its log.
    assert daemon.proc is not None and daemon.proc.poll() is None
    health = httpx.get(daemon.url + "/healthz", timeout=10)
    assert health.status_code == 200, health.text
    after = httpx.head(f"{daemon.url}/images/{IMAGE}/{KERNEL}", timeout=10)
    assert after.status_code == 200
    log = daemon.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
