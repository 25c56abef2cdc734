#!/usr/bin/python3
"""provisiond image writer: stream a gzip'd raw disk image onto this machine's root disk.

Runs in the deploy ramdisk (python3.11, stdlib only): picks the root disk (Ironic root
device hints, else the smallest disk big enough), inflates the image onto it (zeros by
BLKZEROOUT), resumes cut downloads (Range + If-Range), checks sha256 and raw size (else
zeroes the first and last MiB), seeds cloud-init. stdout: JSON lines; logs: stderr.
"""

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import json
import operator
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any, NoReturn

CHUNK = 4 << 20  # bytes per disk write, and the most one decompress() call may return
READ = 1 << 20  # bytes per network read
MIB, GIB = 1 << 20, 1 << 30
ZEROS = bytes(CHUNK)
BLKZEROOUT, BLKRRPART = 0x127F, 0x125F
SKIP_DISKS = ("loop", "ram", "zram", "sr", "dm-", "fd", "nbd")
HINTS = ("name", "size", "serial", "wwn", "model", "vendor", "rotational", "hctl")
SIZE_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge,
            "<=": operator.le, ">": operator.gt, "<": operator.lt}  # fmt: skip
FATAL_HTTP = frozenset({400, 401, 403, 404, 405, 410, 416})
SEED_FILE = "etc/cloud/cloud.cfg.d/99_provisiond.cfg"
SEED = ("# written by provisiond at deploy time\ndatasource_list: [NoCloud]\ndatasource:\n"
        "  NoCloud:\n    seedfrom: {}\nmanual_cache_clean: true\n")  # fmt: skip
URL = r"https?://[^\s\"'#]+"  # also safe unquoted in the seed's YAML
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
MOUNTPOINT = "/tmp/provisiond-root"  # noqa: S108 (the ramdisk's own tmpfs)
STARTED = time.monotonic()
Disk = dict[str, Any]


class Failure(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def log(message: str) -> None:
    print(f"image_writer {time.monotonic() - STARTED:6.1f}s {message}", file=sys.stderr, flush=True)


def _read(*paths: str) -> str:
    for path in paths:
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            if text := f.read().strip():
                return text
    return ""


def read_disks(sys_root: str = "/") -> list[Disk]:
    base, found = os.path.join(sys_root, "sys/block"), []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        at, sectors = f"{base}/{name}", _read(f"{base}/{name}/size")
        if name.startswith(SKIP_DISKS) or not sectors.isdigit() or int(sectors) == 0:
            continue
        scsi = f"{at}/device/scsi_device"
        found.append({
            "name": name, "size": int(sectors) * 512, "model": _read(f"{at}/device/model"),
            "vendor": _read(f"{at}/device/vendor"), "read_only": _read(f"{at}/ro") == "1",
            "serial": _read(f"{at}/device/serial", f"{at}/serial"),
            "wwn": _read(f"{at}/device/wwid", f"{at}/wwid"),
            "rotational": {"0": False, "1": True}.get(_read(f"{at}/queue/rotational")),
            "hctl": min(os.listdir(scsi), default="") if os.path.isdir(scsi) else "",
        })  # fmt: skip
    return found


def _norm(key: str, value: Any) -> str:
    text = " ".join(str(value).split()).lower().removeprefix("s== ")
    if key == "name" and text.startswith("/"):  # /dev/vda, /dev/disk/by-path/... -> vda
        return os.path.basename(os.path.realpath(text))
    return re.sub(r"^(0x|naa\.|eui\.)", "", text) if key == "wwn" else text


def hint_matches(key: str, want: Any, disk: Disk) -> bool:
    """A hint: size in GiB (N or "<op> N"), rotational a bool, else a string (or s== x)."""
    if key == "rotational" and (text := str(want).strip().lower()) in ("true", "false", "1", "0"):
        return bool(disk["rotational"] == (text in ("true", "1")))
    if key == "size":
        parsed = re.fullmatch(r"\s*(==|!=|>=|<=|>|<)?\s*(\d+)\s*", str(want))
        if isinstance(want, bool) or not parsed:
            raise Failure("bad_arguments", f"size hint {want!r}: expected N or '<op> N' (GiB)")
        return bool(SIZE_OPS[parsed[1] or "=="](disk["size"] // GIB, int(parsed[2])))
    return _norm(key, want) == _norm(key, disk[key])


def select_disk(disks: list[Disk], hints: dict[str, Any], min_bytes: int) -> tuple[Disk, str]:
    """The root disk and why; Failure("no_disk") names every disk and why it was refused."""
    for disk in disks:
        shown = {**disk, "size": f"{disk['size'] // GIB} GiB"}
        wrong = [f"{k} {shown[k]!r} is not {w!r}" for k, w in hints.items()
                 if not hint_matches(k, w, disk)]  # fmt: skip
        if not wrong and disk["size"] < min_bytes:
            wrong = [f"too small: {disk['size']} < {min_bytes} bytes"]
        disk["rejected"] = "; ".join(wrong or (["read-only"] if disk["read_only"] else []))
    fits = [d for d in disks if not d["rejected"]]
    if not fits:
        seen = "; ".join(f"{d['name']}: {d['rejected']}" for d in disks) or "no disks"
        message = f"no disk fits (hints {json.dumps(hints)}, at least {min_bytes} bytes); {seen}"
        raise Failure("no_disk", message, disks=disks)
    if hints:
        return fits[0], f"first by name of {len(fits)} disks matching hints {json.dumps(hints)}"
    best = min(fits, key=lambda d: (d["size"], d["name"]))
    return best, f"smallest disk >= {min_bytes} bytes (of {len(disks)} seen)"


class DiskWriter:
    """Aligned 4 MiB writes at increasing offsets; all-zero blocks become BLKZEROOUT."""

    def __init__(self, fd: int, limit: int, *, block_device: bool) -> None:
        self.fd, self.limit, self.zeroout, self.buf = fd, limit, block_device, bytearray()
        self.raw = self.pos = self.zeroed = 0

    def put(self, data: bytes) -> None:  # best at most CHUNK - len(self.buf) bytes at once
        self.raw += len(data)
        if self.raw <= self.limit and not self.buf and len(data) == CHUNK:
            self.block(data)  # the common case: no copy
        elif self.raw <= self.limit:  # never past --raw-size: the disk may end there
            self.buf += data
            if len(self.buf) >= CHUNK:
                self.block(bytes(self.buf))

    def block(self, data: bytes) -> None:
        self.buf = bytearray()
        if self.zeroout and (data == ZEROS if len(data) == CHUNK else not data.strip(b"\0")):
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", self.pos, len(data)))
                self.zeroed, self.pos = self.zeroed + len(data), self.pos + len(data)
                return
            except OSError as exc:
                log(f"BLKZEROOUT refused ({exc}); writing zeros instead")
                self.zeroout = False
        try:
            if os.pwrite(self.fd, data, self.pos) != len(data):
                raise OSError("a short write")
        except OSError as exc:
            raise Failure("download_failed", f"writing the disk at {self.pos}: {exc}") from exc
        self.pos += len(data)


class Stream:
    """The served file's bytes in order, resuming after a cut; hashes and counts them."""

    def __init__(self, url: str, tries: int, timeout: float) -> None:
        self.url, self.tries, self.timeout, self.sha = url, tries, timeout, hashlib.sha256()
        self.offset, self.total, self.etag, self.resumed = 0, -1, "", 0

    def chunks(self) -> Iterator[bytes]:
        for attempt in range(1, self.tries + 1):
            ask = {"Range": f"bytes={self.offset}-", "If-Range": self.etag} if self.offset else {}
            request = urllib.request.Request(self.url, headers={k: v for k, v in ask.items() if v})  # noqa: S310
            try:
                with OPENER.open(request, timeout=self.timeout) as response:
                    self._answered(response)
                    while data := response.read(READ):
                        self.offset += len(data)
                        self.sha.update(data)
                        yield data
                if 0 <= self.total != self.offset:
                    raise ConnectionError("the connection closed early")
                return
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                why = f"{type(exc).__name__}: {exc} at byte {self.offset} of {self.total}"
                status = exc.code if isinstance(exc, urllib.error.HTTPError) else None
                if status in FATAL_HTTP or attempt == self.tries:
                    message = f"GET {self.url}: {why} (try {attempt} of {self.tries})"
                    raise Failure("download_failed", message, download_bytes=self.offset,
                                  tries=attempt, status=status) from exc  # fmt: skip
                log(f"download: {why}; try {attempt + 1} of {self.tries}")
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))

    def _answered(self, response: http.client.HTTPResponse) -> None:
        if not self.offset:  # the first answer: remember the ETag and the size
            self.etag, length = response.getheader("ETag", ""), response.getheader("Content-Length")
            self.total = int(length) if length and length.isdigit() else -1
            return
        self.resumed += 1
        if response.status == 200:  # If-Range did not match: the file on the server changed
            raise Failure("download_failed", f"{self.url} changed on the server during the write")
        if not response.headers.get("Content-Range", "").startswith(f"bytes {self.offset}-"):
            raise ConnectionError(f"a resume got HTTP {response.status}")


def write_image(stream: Stream, writer: DiskWriter) -> str:
    """Inflate the stream onto the disk; why inflating broke off ("" if it did not)."""
    inflater, broken = zlib.decompressobj(wbits=31), ""
    for data in stream.chunks():  # read to the end even when broken: the sha256 is reported
        while data and not broken:
            try:  # bounded output: a run of zeros inflates ~1000:1
                writer.put(inflater.decompress(data, CHUNK - len(writer.buf)))
                data = inflater.unconsumed_tail
                if inflater.eof:  # the rest (unused_data, not the tail) is a next gzip member
                    data, inflater = inflater.unused_data, zlib.decompressobj(wbits=31)
            except zlib.error as exc:
                broken = f"the image does not decompress (near byte {stream.offset}): {exc}"
    with contextlib.suppress(zlib.error):
        writer.put(inflater.flush())
    if writer.buf:
        writer.block(bytes(writer.buf))
    os.fsync(writer.fd)
    return broken


def wipe(fd: int, disk_size: int, image_end: int) -> list[list[int]]:
    """Zero the first and last MiB of the disk and of the image: both GPT copies go."""
    ends = {end for end in (disk_size, min(image_end, disk_size)) if end > MIB}
    ranges = sorted({(0, min(MIB, disk_size))} | {(end - MIB, MIB) for end in ends})
    with contextlib.suppress(OSError):  # best effort: the failure is reported either way
        for start, length in ranges:
            os.pwrite(fd, bytes(length), start)
        os.fsync(fd)
    return [list(r) for r in ranges]


def write_seed(root: str, seed_url: str) -> str:
    """Write the NoCloud seed into a mounted root; forget earlier cloud-init instances."""
    if not os.path.isdir(os.path.join(root, "etc/cloud")):
        raise Failure("configure_failed", "the image's root has no /etc/cloud (no cloud-init)")
    path = os.path.join(root, SEED_FILE)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, SEED.format(seed_url).encode())
    os.fsync(fd)
    os.close(fd)
    os.replace(path + ".tmp", path)
    for old in (os.path.join(root, "var/lib/cloud", n) for n in ("instance", "instances")):
        if os.path.lexists(old):  # a clean first boot
            shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.unlink(old)
    return path


def is_ext(path: str) -> bool:
    """ext2/3/4: the superblock's magic 0xEF53 at byte 1080."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return os.pread(handle.fileno(), 2, 1080) == b"\x53\xef"
    return False


def partitions(disk: str, sys_root: str = "/") -> list[tuple[str, str]]:
    """(name, "major:minor") of the disk's partitions in sysfs, in partition order."""
    base = os.path.join(sys_root, "sys/block", disk)
    numbers = {n: _read(f"{base}/{n}/partition") for n in sorted(os.listdir(base))}
    found = sorted((int(num), n) for n, num in numbers.items() if num.isdigit())
    return [(n, _read(f"{base}/{n}/dev")) for _, n in found]


def configure(disk: str, device: str, seed_url: str, sys_root: str) -> str:
    """Re-read the written disk's partitions, find the root filesystem, seed cloud-init."""
    with open(device, "rb") as handle:
        for _ in range(10):  # EBUSY while the kernel still holds the disk
            try:
                fcntl.ioctl(handle, BLKRRPART)
                break
            except OSError as exc:
                log(f"BLKRRPART on {device}: {exc}")
                time.sleep(0.3)
    deadline = time.monotonic() + (0 if is_ext(device) else 15)  # 0: no partition table
    while not (found := partitions(disk, sys_root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, dev in found:  # devtmpfs makes the nodes; if not, mknod
        if not os.path.exists(f"/dev/{name}") and re.fullmatch(r"\d+:\d+", dev):
            major, minor = map(int, dev.split(":"))
            os.mknod(f"/dev/{name}", stat.S_IFBLK | 0o600, os.makedev(major, minor))
    candidates, tried = [p for p in [f"/dev/{n}" for n, _ in found] or [device] if is_ext(p)], []
    os.makedirs(MOUNTPOINT, exist_ok=True)
    for path in candidates:
        mount = subprocess.run(["mount", "-t", "ext4", path, MOUNTPOINT], capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
        if mount.returncode == 0:
            try:
                if os.path.isfile(os.path.join(MOUNTPOINT, "etc/os-release")):
                    write_seed(MOUNTPOINT, seed_url)
                    return os.path.basename(path)
            finally:
                subprocess.run(["umount", MOUNTPOINT], capture_output=True, timeout=60, check=True)
                os.sync()
        tried.append(f"{path}: {mount.stderr.strip() or 'no /etc/os-release'}")
    raise Failure("configure_failed", f"no root filesystem on {disk}: ext filesystems "
                  f"{candidates or 'none'}; {'; '.join(tried)}")  # fmt: skip


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Failure("bad_arguments", message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="image_writer.py", description="Write a gzip'd raw image to the root disk.")
    p.add_argument("--url", required=True, help="the served disk.raw.gz")
    p.add_argument("--sha256", required=True, type=str.lower, help="of the served file")
    p.add_argument("--raw-size", required=True, type=int, help="decompressed bytes, exactly")
    p.add_argument("--min-disk", type=int, default=0, help="bytes (default: --raw-size)")
    p.add_argument("--hints", default={}, type=json.loads, help="root device hints (JSON)")
    p.add_argument("--seed-url", help="the NoCloud seedfrom URL to write into the image")
    p.add_argument("--tries", type=int, default=5, help="HTTP requests at most (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per network wait")
    p.add_argument("--sys-root", default="/", help="where /sys is (tests)")
    p.add_argument("--target", help="write this file or device instead of choosing a disk")
    args = p.parse_args(argv)
    urls = [u for u in (args.url, args.seed_url) if u and not re.fullmatch(URL, u)]
    for wrong, message in (
        (urls, f"not an http(s) URL without spaces, quotes or #: {urls}"),
        (not re.fullmatch(r"[0-9a-f]{64}", args.sha256), "--sha256 must be 64 hex digits"),
        (args.raw_size <= 0 or args.min_disk < 0, "--raw-size must be > 0, --min-disk >= 0"),
        (args.tries < 1 or args.timeout <= 0, "--tries and --timeout must be positive"),
        (not isinstance(args.hints, dict) or set(args.hints) - set(HINTS), f"--hints: {HINTS}"),
    ):
        if wrong:
            p.error(message)
    return args


def run(args: argparse.Namespace) -> None:
    min_bytes = max(args.min_disk, args.raw_size)
    if args.target:
        name, path, why = os.path.basename(args.target), args.target, "--target"
    else:
        disk, why = select_disk(read_disks(args.sys_root), args.hints, min_bytes)
        name, path = disk["name"], f"/dev/{disk['name']}"
    try:
        block = stat.S_ISBLK(os.stat(path).st_mode)
        fd = os.open(path, os.O_WRONLY | (os.O_EXCL if block else 0))  # EBUSY if in use
    except OSError as exc:
        raise Failure("no_disk", f"cannot open {path} for writing: {exc}") from exc
    stream = Stream(args.url, args.tries, args.timeout)
    writer = DiskWriter(fd, args.raw_size, block_device=block)
    try:
        if (size := os.lseek(fd, 0, os.SEEK_END)) < min_bytes:
            raise Failure("no_disk", f"{path} is too small: {size} < {min_bytes} bytes")
        emit("phase", phase="disk_selected", disk=name, size_bytes=size, why=why)
        emit("phase", phase="image_download", url=args.url)
        started = time.monotonic()
        try:
            broken = write_image(stream, writer)
        except Failure as failure:
            failure.details["wiped"] = wipe(fd, size, writer.pos) if writer.pos else []
            raise
        seconds, actual, raw = time.monotonic() - started, stream.sha.hexdigest(), writer.raw
        if actual != args.sha256:
            raise Failure("checksum_mismatch", f"sha256 of {args.url} is {actual}, expected "
                          f"{args.sha256}", expected=args.sha256, actual=actual,
                          wiped=wipe(fd, size, args.raw_size))  # fmt: skip
        if raw != args.raw_size or broken:
            raise Failure("size_mismatch", broken or f"the image is {raw} bytes raw, expected "
                          f"{args.raw_size}", expected=args.raw_size, actual=raw,
                          wiped=wipe(fd, size, args.raw_size))  # fmt: skip
        if size > args.raw_size + MIB:  # an old backup GPT at the disk's end must not linger
            os.pwrite(fd, bytes(MIB), size - MIB)
            os.fsync(fd)
    finally:
        os.close(fd)
    emit("phase", phase="image_written", bytes=raw, download_bytes=stream.offset,
         seconds=round(seconds, 2), mb_s=round(raw / 1e6 / max(seconds, 1e-6), 1),
         resumed=stream.resumed, sha256=actual, zeroed_bytes=writer.zeroed)  # fmt: skip
    if args.seed_url:
        try:
            root = configure(name, path, args.seed_url, args.sys_root)
        except (OSError, subprocess.SubprocessError) as exc:
            raise Failure("configure_failed", f"configuring {path}: {exc}") from exc
        emit("phase", phase="disk_configured", root=root, seed_url=args.seed_url)


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
        emit("done")
        return 0
    except Failure as exc:
        failure = exc
    except Exception as exc:  # a bug: still one JSON line for the daemon
        failure = Failure("internal", f"{type(exc).__name__}: {exc}")
    emit("error", code=failure.code, message=failure.message, **failure.details)
    return 1


if __name__ == "__main__":
    sys.exit(main())
