"""The guest image's files: reading ELF files and writing the ramdisk.

:mod:`provisiond.rack.guest_image` owns the recipe and the build; this module holds
the file-level steps it runs on the extracted package tree, none of which knows the
recipe (what they act on comes in as arguments, so nothing here feeds the cache key):

- ELF64 reading without binutils: :func:`elf_needed` (DT_NEEDED sonames) and
  :func:`modinfo` (a kernel module's ``.modinfo`` strings);
- :func:`module_closure`: the wanted kernel modules plus their ``depends=`` and
  softdep ``pre:`` modules, dependencies first, decompressed for busybox ``insmod``;
- :func:`prune` (globs with one ``{a,b}`` group) and :func:`check_libraries` (every
  dynamic ELF file's NEEDED libraries are in the tree's library folders);
- :func:`write_cpio_gz`: a reproducible gzip'd newc cpio (sorted, owner root, mtime 0)
  plus device nodes, which an unprivileged builder cannot create in the tree itself::

      write_cpio_gz(root, out / "initrd.img", {"dev/null": (stat.S_IFCHR | 0o666, 1, 3)})

Errors are :class:`GuestImageError`, defined here because this module sits below
``guest_image`` in the import graph; ``guest_image`` re-exports it.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from provisiond.errors import ProvisiondError

__all__ = [
    "GuestImageError",
    "check_libraries",
    "elf_needed",
    "modinfo",
    "module_closure",
    "prune",
    "write_cpio_gz",
]


class GuestImageError(ProvisiondError):
    code = "guest_image_failed"


def _elf_sections(data: bytes) -> list[tuple[str, int, int, int, int]] | None:
    """(name, type, offset, size, link) of each section of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQI", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = raw[shstrndx][4] if shnum else 0

    def cstr(at: int) -> str:
        return data[at : data.index(b"\0", at)].decode()

    return [(cstr(names_at + n), t, off, size, link) for n, t, _f, _a, off, size, link in raw]


def elf_needed(data: bytes) -> list[str]:
    """The DT_NEEDED sonames of an ELF64 file ([] for static or non-ELF files)."""
    sections = _elf_sections(data) or []
    needed = []
    for _name, kind, off, size, link in sections:
        if kind == 6:  # SHT_DYNAMIC; sh_link names its string table
            strtab = sections[link][2]
            for tag, val in struct.iter_unpack("<qQ", data[off : off + size]):
                if tag == 1:  # DT_NEEDED
                    needed.append(data[strtab + val : data.index(b"\0", strtab + val)].decode())
    return needed


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The .modinfo strings of a kernel module: key → values."""
    info: dict[str, list[str]] = {}
    for name, _kind, off, size, _link in _elf_sections(data) or []:
        if name == ".modinfo":
            for item in data[off : off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def module_closure(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """The wanted modules and their depends= (and softdep pre:), dependencies first."""
    index = {}
    for path in moddir.rglob("*.ko*"):
        index[path.name.split(".ko")[0].replace("-", "_")] = path
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name not in index:
            raise GuestImageError(
                f"kernel module {name} not found (needed via {' → '.join(chain)})",
                hint="is it built in? then drop it from MODULES",
            )
        seen.add(name)
        path = index[name]
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)  # busybox insmod takes plain .ko files only
        elif not path.name.endswith(".ko"):
            raise GuestImageError(
                f"cannot decompress {path.name}", hint="only .ko and .ko.xz are supported"
            )
        info = modinfo(data)
        deps = [d for v in info.get("depends", []) for d in v.split(",") if d]
        for soft in info.get("softdep", []):
            pre = soft.split("pre:", 1)[1].split("post:")[0] if "pre:" in soft else ""
            deps += [d for d in pre.split() if d.replace("-", "_") in index]
        for dep in deps:
            visit(dep, (*chain, name))
        order.append((name, data))

    for module in wanted:
        visit(module, (module,))
    return order


def prune(root: Path, patterns: Iterable[str]) -> None:
    """Remove what each glob (relative to ``root``, with at most one ``{a,b}``) matches."""
    for pattern in patterns:
        head, brace, rest = pattern.partition("{")
        alternatives = rest.split("}")[0].split(",") if brace else [""]
        tail = rest.split("}", 1)[1] if brace else ""
        for alt in alternatives:
            for path in root.glob(head + alt + tail):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def check_libraries(root: Path, lib_dirs: Iterable[str]) -> None:
    """Every dynamic ELF file's NEEDED libraries must be in one of ``lib_dirs``."""
    present = {p.name for d in lib_dirs if (root / d).is_dir() for p in (root / d).iterdir()}
    missing: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            for soname in elf_needed(path.read_bytes()):
                if soname not in present:
                    missing.setdefault(soname, []).append(str(path.relative_to(root)))
    if missing:
        detail = "; ".join(
            f"{s} (needed by {', '.join(u[:3])})" for s, u in sorted(missing.items())
        )
        raise GuestImageError(
            f"libraries missing from the guest: {detail}",
            hint="add the package that ships them to PACKAGES, or PRUNE the users",
        )


def _cpio_entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), os.lstat(path)


def write_cpio_gz(root: Path, out: Path, devices: Mapping[str, tuple[int, int, int]]) -> None:
    """A gzip'd newc cpio of ``root`` (owner root, mtime 0) plus ``devices`` nodes.

    ``devices`` maps a path in the archive to (mode, major, minor).
    """

    def header(
        f: gzip.GzipFile, name: str, ino: int, mode: int, size: int, rdev: tuple[int, int]
    ) -> None:
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, *rdev, len(name) + 1, 0)
        raw = b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name.encode() + b"\0"
        f.write(raw + b"\0" * (-len(raw) % 4))

    with (
        out.open("wb") as dest,
        gzip.GzipFile(fileobj=dest, mode="wb", compresslevel=6, mtime=0) as f,
    ):
        ino = 0
        for ino, (name, st) in enumerate(_cpio_entries(root), start=1):
            path = root / name
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).encode()
                header(f, name, ino, st.st_mode, len(target), (0, 0))
                f.write(target + b"\0" * (-len(target) % 4))
            elif stat.S_ISREG(st.st_mode):
                header(f, name, ino, st.st_mode, st.st_size, (0, 0))
                with path.open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write(b"\0" * (-st.st_size % 4))
            elif stat.S_ISDIR(st.st_mode):
                header(f, name, ino, st.st_mode, 0, (0, 0))
        for extra, (name, (mode, major, minor)) in enumerate(
            sorted(devices.items()), start=ino + 1
        ):
            header(f, name, extra, mode, 0, (major, minor))
        header(f, "TRAILER!!!", 0, 0, 0, (0, 0))
