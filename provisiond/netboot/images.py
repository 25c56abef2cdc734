"""The image file store: ``<images_dir>/<name>/<file>``, with a sha256 manifest.

Adding copies each file into a temporary folder inside the store while hashing it
(one streamed pass, 1 MiB at a time), fsyncs, writes ``.sha256.json`` and then
renames the folder into place, so a reader never sees a half-copied image.
``verify`` re-hashes the stored files against the checksums the catalog recorded.

:meth:`ImageStore.open_file` is the only way the HTTP route reaches a file. It
accepts one plain file name inside one image folder: no ``/``, no leading dot (so
no ``..`` and no manifest), the image folder opened with ``O_NOFOLLOW`` and the
file opened relative to it with ``O_NOFOLLOW | O_NONBLOCK``, and only regular files.
A symlink planted inside the store therefore cannot lead outside it, and a FIFO
cannot hang the daemon in ``open()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from provisiond.errors import BadRequest, Conflict, Forbidden, NotFound

ROLES = ("kernel", "initrd", "rootfs")
MANIFEST = ".sha256.json"
CHUNK = 1 << 20
T = TypeVar("T")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def safe_component(value: str, what: str) -> str:
    """One path component from a URL or the CLI: letters, digits, ``._+-``, no leading dot."""
    if not _SAFE.match(value):
        raise BadRequest(
            f"{what} {value[:80]!r} is not a plain file name",
            hint="use letters, digits and ._+- only, not starting with a dot; no slashes",
        )
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredFile:
    role: str
    #: Path relative to the store root, as the catalog records it: ``<name>/<file>``.
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class OpenFile:
    fd: int
    size: int
    mtime: float
    etag: str


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str) -> Path:
        return self.root / safe_component(name, "image name")

    def add(self, name: str, files: dict[str, Path]) -> list[StoredFile]:
        """Copy ``files`` (role -> source path) into ``<root>/<name>/`` atomically."""
        self.folder(name)  # a bad name is refused before the files are looked at
        for role, src in files.items():
            if role not in ROLES:
                raise BadRequest(f"unknown file role {role!r}", hint=f"use {', '.join(ROLES)}")
            if not src.is_file():
                raise NotFound(f"{role} file {src} does not exist", hint="check the path")
            safe_component(src.name, f"{role} file name")
        names = [src.name for src in files.values()]
        if len(set(names)) != len(names):
            raise BadRequest(
                f"two files share a name: {', '.join(names)}",
                hint="rename one; files are stored under their own names",
            )

        def copy(tmp: Path) -> tuple[dict[str, str], list[StoredFile]]:
            stored = []
            for role, src in files.items():
                digest = _copy_hashing(src, tmp / src.name)
                size = (tmp / src.name).stat().st_size
                stored.append(StoredFile(role, f"{name}/{src.name}", digest, size))
            return {Path(s.path).name: s.sha256 for s in stored}, stored

        return self.add_built(name, copy)

    def add_built(self, name: str, build: Callable[[Path], tuple[dict[str, str], T]]) -> T:
        """Let ``build`` write files into a temporary folder, then rename it to ``<name>/``.

        ``build(folder)`` returns ``({file name: sha256}, result)``; the sums become
        the manifest. If it raises, the temporary folder is removed and nothing appears.
        """
        target = self.folder(name)
        if target.exists():
            raise Conflict(
                f"image folder {target} exists",
                hint="delete the image first, or add it under another name",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            sums, result = build(tmp)
            (tmp / MANIFEST).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
            os.rename(tmp, target)  # atomic on one file system; fails if target appeared
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return result

    def remove(self, name: str) -> None:
        target = self.folder(name)
        if not target.exists():
            return
        trash = self.root / f".del-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def verify(self, paths: dict[str, str], sums: dict[str, str]) -> list[str]:
        """Problems found re-hashing ``paths`` (role -> catalog path) against ``sums``."""
        problems = []
        for role, rel in paths.items():
            if not rel:
                continue
            path = self.root / rel
            expected = sums.get(role)
            if not path.is_file() or path.is_symlink():
                problems.append(f"{role} {rel}: missing from {self.root}")
            elif not expected:
                problems.append(f"{role} {rel}: no checksum recorded")
            elif (actual := sha256_file(path)) != expected:
                problems.append(f"{role} {rel}: sha256 {actual[:16]}... != {expected[:16]}...")
        return problems

    def open_file(self, name: str, file: str) -> OpenFile:
        """Open one stored file for reading; the caller closes ``fd``."""
        safe_component(name, "image name")
        safe_component(file, "file name")
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        missing = NotFound(f"no file {name}/{file} in the image store", hint="images list")
        try:
            dfd = os.open(self.root / name, flags | os.O_DIRECTORY)
        except FileNotFoundError:
            raise missing from None
        except OSError:  # ELOOP (a symlink) or ENOTDIR
            raise Forbidden(
                f"{name} is not an image folder", hint="symlinks are not served"
            ) from None
        try:
            try:
                # O_NONBLOCK: a FIFO planted in the store must not block the event loop
                # in open() (it is then refused as not a regular file).
                fd = os.open(file, flags | os.O_NONBLOCK, dir_fd=dfd)
            except FileNotFoundError:
                raise missing from None
            except OSError:
                raise Forbidden(
                    f"{name}/{file} is not a regular file", hint="symlinks are not served"
                ) from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise Forbidden(
                    f"{name}/{file} is not a regular file", hint="only image files are served"
                )
            etag = self._etag(dfd, file, info)
            return OpenFile(fd, info.st_size, info.st_mtime, etag)
        finally:
            os.close(dfd)

    @staticmethod
    def _etag(dfd: int, file: str, info: os.stat_result) -> str:
        try:
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            mfd = os.open(MANIFEST, flags, dir_fd=dfd)
            with os.fdopen(mfd, "rb") as handle:
                sums = json.loads(handle.read(65536))
            digest = sums.get(file) if isinstance(sums, dict) else None
        except (OSError, ValueError, RecursionError):  # a damaged manifest: a weak ETag
            digest = None
        if isinstance(digest, str) and digest:
            return f'"{digest}"'
        return f'W/"{info.st_size:x}-{info.st_mtime_ns:x}"'
