"""The build cache the virtual rack's images share (the ramdisk and the Debian disk).

A build lands in ``<cache>/<stem>`` and is reused while its recipe key is the same.
Builders of one key take turns on ``<cache>/<stem>.lock`` (flock, so a killed builder
frees it); a builder builds in ``<cache>/.build-<stem>-*`` and renames the result into
place, so a half-made build is never taken for a finished one, and leftovers of a
killed builder are removed by the next one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from provisiond.errors import ProvisiondError


def ensure_cache(cache: Path, error: type[ProvisiondError]) -> Path:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(
            f"cannot create the image cache {cache}: {exc.strerror}",
            hint="set PROVISIOND_IMAGE_CACHE to a writable directory",
        ) from exc
    return cache


def take_lock(path: Path, wait_s: float, error: type[ProvisiondError]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise error(
                    f"{path} stayed locked for {wait_s:.0f} s",
                    hint="another build of this recipe is stuck; stop it",
                ) from None
            time.sleep(1)


def cached_build(
    cache: Path,
    stem: str,
    *,
    done: Callable[[Path], bool],
    build: Callable[[Path], Path],
    force: bool,
    lock_wait_s: float,
    error: type[ProvisiondError],
) -> tuple[Path, bool]:
    """``(<cache>/<stem>, built)``: the cached build when ``done`` says it is complete
    (and not ``force``), else ``build(work_dir)``'s result folder moved into place."""
    out = cache / stem
    if done(out) and not force:
        return out, False
    fd = take_lock(cache / f"{stem}.lock", lock_wait_s, error)
    try:
        if done(out) and not force:  # another process built it while we waited
            return out, False
        for stale in cache.glob(f".build-{stem}-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".build-{stem}-") as tmp:
            result = build(Path(tmp))
            if out.is_dir():  # force: replace the old build
                shutil.rmtree(out)
            result.rename(out)
        return out, True
    finally:
        os.close(fd)
