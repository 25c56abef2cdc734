"""Look inside a raw whole-disk image: its partitions, its OS and whether it has cloud-init.

Registration needs to know whether an image can take the deploy's NoCloud seed
config, without root and on a host kernel that has no partition-table parsing, no
loop partitions and no device-mapper (DESIGN.md, "Disk images"). So nothing is
mounted: the MBR or GPT is parsed here, and each partition is opened read-only by
e2fsprogs' ``debugfs`` straight from the image file, with the partition's byte
offset in ext2fs's io options (``debugfs -R 'stat /etc' 'disk?offset=106954752'``).
Each request is one short ``debugfs`` run (3 ms on the 2 GiB Debian image).

Only ext2/3/4 file systems can be read this way; a root on XFS, Btrfs or LVM is
reported as "no root found", and the caller decides what that means. ``debugfs``
does not follow a symbolic link in the last path component (``/etc/os-release`` is
one on Debian), so :meth:`ExtFs.resolve` follows those itself.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisiond.netboot.disk_convert import DiskImageRefused

SECTOR = 512
#: Where an image may keep the cloud-init program (Debian/Ubuntu/RHEL packages; pip).
CLOUD_INIT_PROGRAMS = ("/usr/bin/cloud-init", "/usr/local/bin/cloud-init")
#: Where the deploy writes its NoCloud seed config (``cloud.cfg.d/99_provisiond.cfg``).
CLOUD_CONFIG = "/etc/cloud"
#: cloud-init's own off switch: when this file exists it does nothing at boot.
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
#: MBR partition types that hold logical partitions (EBR chains).
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_GPT = 0xEE
MAX_LOGICAL = 128
MAX_LINKS = 8
DEBUGFS_TIMEOUT_S = 60
_TYPE = re.compile(r"Type: (\w+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"')


@dataclass(frozen=True)
class Partition:
    number: int
    offset: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # GPT type GUID, or the MBR type byte as "0x83"


@dataclass(frozen=True)
class DiskContents:
    """What :func:`inspect_disk` found; ``root`` is None when no ext2/3/4 root was found."""

    table: str  # gpt | mbr
    partitions: tuple[Partition, ...]
    root: Partition | None = None
    os_family: str = ""  # os-release ID: debian, ubuntu, rocky...
    os_version: str = ""  # os-release VERSION_ID: 12, 24.04...
    cloud_init: str = ""  # the cloud-init program found in the root, "" if none
    cloud_config: bool = False  # /etc/cloud is a directory (the deploy writes into it)
    cloud_init_disabled: bool = False

    def describe(self) -> str:
        parts = ", ".join(
            f"{p.number} ({p.size >> 20} MiB, type {p.type})" for p in self.partitions
        )
        return f"{self.table.upper()} with partitions {parts or 'none'}"


def require_debugfs() -> None:
    if shutil.which("debugfs") is None:
        raise DiskImageRefused(
            "debugfs is not installed on this host; it reads the image's root file system "
            "to check for cloud-init",
            hint="apt-get install e2fsprogs (scripts/bootstrap.sh installs it)",
        )


def inspect_disk(path: Path) -> DiskContents:
    """Partitions, root file system, OS and cloud-init of the raw disk image at ``path``."""
    require_debugfs()
    size = path.stat().st_size
    with path.open("rb") as handle:

        def read(offset: int, length: int) -> bytes:
            handle.seek(offset)
            return handle.read(length)

        table, partitions = partition_table(read, size, str(path))
    with _plain_name(path) as image:
        roots = []  # (no os-release?, number, file system, partition, os-release path)
        for part in partitions:
            fs = ExtFs(image, part.offset)
            if fs.opens() and fs.kind("/etc") == "directory":
                release_file = fs.resolve_any(OS_RELEASE)
                roots.append((release_file is None, part.number, fs, part, release_file))
        if not roots:
            return DiskContents(table, tuple(partitions))
        _, _, fs, root, release_file = min(roots, key=lambda found: found[:2])
        release = _os_release(fs.read(release_file or ""))
        return DiskContents(
            table,
            tuple(partitions),
            root,
            os_family=_token(release.get("ID", "")),
            os_version=_token(release.get("VERSION_ID", "")),
            cloud_init=next(
                (p for p in CLOUD_INIT_PROGRAMS if fs.kind(fs.resolve(p) or "") == "regular"), ""
            ),
            cloud_config=fs.kind(fs.resolve(CLOUD_CONFIG) or "") == "directory",
            cloud_init_disabled=fs.resolve(CLOUD_INIT_DISABLED) is not None,
        )


# --- partition tables ---------------------------------------------------------------


def partition_table(
    read: Callable[[int, int], bytes], size: int, name: str
) -> tuple[str, list[Partition]]:
    """``("gpt" | "mbr", partitions)`` from the first sectors, in partition order."""
    mbr = read(0, SECTOR)
    entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
    if any(kind == MBR_GPT for _, kind, _, _ in entries):
        return "gpt", [p for p in _gpt(read, name) if p.offset + p.size <= size]
    found = []
    for number, (_, kind, first, count) in enumerate(entries, start=1):
        if kind in MBR_EXTENDED:
            found += _logical(read, first)
        elif kind and count:
            found.append(Partition(number, first * SECTOR, count * SECTOR, f"0x{kind:02x}"))
    return "mbr", sorted((p for p in found if p.offset + p.size <= size), key=lambda p: p.number)


def _gpt(read: Callable[[int, int], bytes], name: str) -> list[Partition]:
    header = read(SECTOR, SECTOR)
    damaged = DiskImageRefused(
        f"{name} has a protective MBR but no valid GPT header at sector 1",
        hint="the partition table is damaged; check it with 'sgdisk -v IMAGE'",
    )
    if header[:8] != b"EFI PART":
        raise damaged
    header_size, crc = struct.unpack_from("<II", header, 12)
    if not 92 <= header_size <= SECTOR:
        raise damaged
    if zlib.crc32(header[:16] + bytes(4) + header[20:header_size]) != crc:
        raise damaged
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if entry_size < 128 or count * entry_size > 1 << 20:
        raise damaged
    table = read(entries_lba * SECTOR, count * entry_size)
    if len(table) != count * entry_size or zlib.crc32(table) != entries_crc:
        raise damaged
    found = []
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last >= first:
            kind = str(uuid.UUID(bytes_le=entry[:16]))
            found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, kind))
    return found


def _logical(read: Callable[[int, int], bytes], extended: int) -> list[Partition]:
    """Logical partitions 5, 6... from the EBR chain of the extended partition."""
    found: list[Partition] = []
    ebr = extended
    while len(found) < MAX_LOGICAL:
        sector = read(ebr * SECTOR, SECTOR)
        if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
            break
        _, kind, first, count = struct.unpack_from("<B3xB3xII", sector, 446)
        _, next_kind, next_first, _ = struct.unpack_from("<B3xB3xII", sector, 462)
        if kind and count:
            found.append(Partition(5 + len(found), (ebr + first) * SECTOR, count * SECTOR,
                                   f"0x{kind:02x}"))  # fmt: skip
        if next_kind not in MBR_EXTENDED or not next_first:
            break
        ebr = extended + next_first
    return found


# --- file systems -------------------------------------------------------------------


class ExtFs:
    """One ext2/3/4 file system inside an image, read by ``debugfs`` (read-only)."""

    def __init__(self, image: Path, offset: int) -> None:
        self.target = f"{image}?offset={offset}"

    def _run(self, request: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["debugfs", "-R", request, self.target],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=DEBUGFS_TIMEOUT_S,
            env={**os.environ, "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"},
            check=False,
        )

    def opens(self) -> bool:
        """Whether this is an ext2/3/4 file system debugfs can open."""
        return self._run("stat /").returncode == 0

    def _stat(self, path: str) -> tuple[str, str]:
        """``(type, fast link target)``; ``("", "")`` when missing or unreadable."""
        if not path.startswith("/") or any(c in path for c in '"\\\n\r\0'):
            return "", ""
        out = self._run(f'stat "{path}"').stdout
        kind, link = _TYPE.search(out), _FAST_LINK.search(out)
        return (kind.group(1) if kind else ""), (link.group(1) if link else "")

    def kind(self, path: str) -> str:
        """``regular``, ``directory``, ``symlink``...; ``""`` when missing."""
        return self._stat(path)[0]

    def resolve(self, path: str) -> str | None:
        """``path`` with symbolic links in its last component followed; None if missing."""
        for _ in range(MAX_LINKS):
            kind, target = self._stat(path)
            if kind != "symlink":
                return path if kind else None
            target = target or self.read(path)  # a slow symlink keeps its target in a block
            if not target:
                return None
            joined = posixpath.join(posixpath.dirname(path), target)
            path = "/" + posixpath.normpath(joined).lstrip("/")
        return None

    def resolve_any(self, paths: tuple[str, ...]) -> str | None:
        return next((found for p in paths if (found := self.resolve(p))), None)

    def read(self, path: str) -> str:
        if not path or any(c in path for c in '"\\\n\r\0'):
            return ""
        return self._run(f'cat "{path}"').stdout


def _os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            values[key] = value.strip().strip("\"'")
    return values


def _token(value: str) -> str:
    """An os-release value fit for the catalog: lower case, [a-z0-9._-], 32 characters."""
    return re.sub(r"[^a-z0-9._-]", "", value.lower())[:32]


@contextmanager
def _plain_name(path: Path) -> Iterator[Path]:
    """``path`` under a name with no ``?`` (ext2fs reads io options after the first one)."""
    with tempfile.TemporaryDirectory(prefix="provisiond-inspect-") as tmp:
        link = Path(tmp) / "disk.raw"
        link.symlink_to(path.resolve())
        yield link
