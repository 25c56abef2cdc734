"""The guest image for the virtual rack: one kernel and one ramdisk for inspection and deploy.

Built from Debian packages only (``apt-get download`` plus ``dpkg-deb -x``; no mirror
URL, no debootstrap), so it needs nothing but the host's configured apt sources::

    image = build_guest_image()          # or: python -m provisiond.rack.guest_image
    image.kernel, image.initrd, image.kernel_args

The ramdisk carries busybox, dropbear, python3.11 with its standard library, the few
kernel modules a virtual or simple physical machine needs for its NIC and disk, and
two programs from ``provisiond/rack/guest/``: ``init`` (PID 1: network, host key) and
``phone_home.py`` (reads the NoCloud seed, starts sshd, calls provisiond back).

A *recipe* (the constants below plus the guest files' content) and the package
versions apt resolves for it hash to a cache key: output lands in
``<cache>/<recipe_hash>/{vmlinuz,initrd.img}``, renamed into place whole, so a build is
redone only when the recipe or a package changes. A lock file serialises builders of
one recipe; downloaded .debs are kept in ``<cache>/debs/``. The cache defaults to
``$PROVISIOND_IMAGE_CACHE`` or /var/cache/provisiond/guest-images.

Checks at build time: every ELF file's NEEDED libraries must be in the tree, and the
extracted interpreter (run through the extracted dynamic loader) must import the
modules the agent uses while it precompiles the standard library, so a guest does not
compile bytecode under TCG on every boot.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import importlib.resources
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisiond.errors import ProvisiondError

BUILDER_VERSION = 1
KERNEL_META_PACKAGE = "linux-image-amd64"
PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libexpat1",
    "libssl3",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
)
MODULES = ("virtio_net", "virtio_pci", "virtio_blk", "e1000")  # plus their depends=
KERNEL_ARGS = "console=ttyS0 quiet"
PYTHON = "python3.11"
SMOKE_IMPORTS = "json, socket, ssl, subprocess, urllib.request, platform, os, hashlib, argparse"
# Paths (relative globs) pruned from the package tree: docs, translations, iconv
# tables, and standard-library parts a headless agent never imports.
PRUNE = (
    "usr/share/*",
    "usr/lib/x86_64-linux-gnu/gconv",
    "sbin/ldconfig*",
    f"usr/lib/{PYTHON}/{{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,pydoc_data}}",
    f"usr/lib/{PYTHON}/unittest/test",
    f"usr/lib/{PYTHON}/lib-dynload/{{_test*,_ctypes_test*,xxlimited*,_xxtestfuzz*}}",
    f"usr/lib/{PYTHON}/lib-dynload/{{_curses*,readline*,_dbm*,nis*,_sqlite3*,ossaudiodev*}}",
)
# Files from provisiond/rack/guest/ → (path in the ramdisk, mode).
GUEST_FILES = {
    "init": ("init", 0o755),
    "phone_home.py": ("usr/lib/provisiond/phone_home.py", 0o755),
    "udhcpc.script": ("usr/share/udhcpc/default.script", 0o755),
    "nohup": ("usr/bin/nohup", 0o755),
    "inittab": ("etc/inittab", 0o644),
    "passwd": ("etc/passwd", 0o644),
    "group": ("etc/group", 0o644),
    "shadow": ("etc/shadow", 0o600),  # root:*: no password matches, yet not locked ("!")
    "shells": ("etc/shells", 0o644),
    "nsswitch.conf": ("etc/nsswitch.conf", 0o644),
    "hosts": ("etc/hosts", 0o644),
}
DIRS = {
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "mnt": 0o755,
    "root": 0o700,
    "root/.ssh": 0o700,
    "etc/dropbear": 0o700,
    "var/log": 0o755,
}
SYMLINKS = {"var/run": "../run", "usr/bin/python3": PYTHON}
DEVICES = {"dev/console": (stat.S_IFCHR | 0o600, 5, 1), "dev/null": (stat.S_IFCHR | 0o666, 1, 3)}
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
DEFAULT_CACHE = Path("/var/cache/provisiond/guest-images")
LOCK_WAIT = 1200.0  # s; a cold build takes about a minute
APT_TIMEOUT = 600.0


class GuestImageError(ProvisiondError):
    code = "guest_image_failed"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    recipe_hash: str
    built: bool  # False when reused from the cache
    kernel_args: str
    size_bytes: int  # kernel plus initrd


@dataclass(frozen=True)
class Recipe:
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    kernel_args: str
    files: tuple[tuple[str, int, bytes], ...]  # (path in the ramdisk, mode, content)
    prune: tuple[str, ...] = PRUNE
    version: int = BUILDER_VERSION


def default_recipe() -> Recipe:
    guest = importlib.resources.files("provisiond.rack") / "guest"
    files = [
        (dest, mode, (guest / name).read_bytes()) for name, (dest, mode) in GUEST_FILES.items()
    ]
    return Recipe(PACKAGES, MODULES, KERNEL_ARGS, tuple(sorted(files)))


def recipe_hash(recipe: Recipe, versions: Mapping[str, str]) -> str:
    """A 16-hex-digit key over the recipe and the resolved package versions."""
    doc = {
        "version": recipe.version,
        "packages": list(recipe.packages),
        "modules": list(recipe.modules),
        "kernel_args": recipe.kernel_args,
        "prune": list(recipe.prune),
        "files": [[d, m, hashlib.sha256(c).hexdigest()] for d, m, c in recipe.files],
        "layout": [DIRS, SYMLINKS, {k: list(v) for k, v in DEVICES.items()}],
        "versions": dict(sorted(versions.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _run(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = APT_TIMEOUT,
) -> str:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise GuestImageError(
            f"{cmd[0]} not found", hint="build on a Debian host (apt, dpkg)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestImageError(f"{' '.join(cmd[:3])} … took over {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise GuestImageError(
            f"{' '.join(cmd[:4])} … failed (exit {done.returncode}): {' | '.join(tail)}",
            hint="check the apt sources and run `apt-get update`",
        )
    return done.stdout


def resolve_versions(recipe: Recipe) -> dict[str, str]:
    """Package → candidate version, with the kernel package linux-image-amd64 points at."""
    depends = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    kernels = re.findall(r"Depends: (linux-image-\S+-amd64)$", depends, re.M)
    if not kernels:
        raise GuestImageError(
            f"{KERNEL_META_PACKAGE} depends on no kernel package", hint="run `apt-get update`"
        )
    names = (*recipe.packages, kernels[0])
    versions: dict[str, str] = {}
    package = ""
    for line in _run(["apt-cache", "policy", *names]).splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            package = line[:-1]
        elif line.strip().startswith("Candidate:"):
            versions[package] = line.split(":", 1)[1].strip()
    missing = [n for n in names if versions.get(n, "(none)") == "(none)"]
    if missing:
        raise GuestImageError(
            f"apt has no candidate for {', '.join(missing)}",
            hint="run `apt-get update`; the packages are in Debian bookworm main",
        )
    return versions


def _deb_name(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}_"


def _download(
    versions: Mapping[str, str], debs: Path, log: Callable[[str], None]
) -> dict[str, Path]:
    """The .deb of each package at its resolved version, downloading the missing ones."""
    debs.mkdir(parents=True, exist_ok=True)

    def cached() -> dict[str, Path]:
        found = {}
        for pkg, ver in versions.items():
            hits = sorted(debs.glob(_deb_name(pkg, ver) + "*.deb"))
            if hits:
                found[pkg] = hits[0]
        return found

    have = cached()
    wanted = [f"{p}={v}" for p, v in sorted(versions.items()) if p not in have]
    if wanted:
        log(f"downloading {len(wanted)} packages into {debs}")
        with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
            _run(["apt-get", "download", "-q", *wanted], cwd=Path(tmp))
            for deb in Path(tmp).glob("*.deb"):
                deb.rename(debs / deb.name)  # whole files only: a download is never half-seen
        have = cached()
    missing = sorted(set(versions) - set(have))
    if missing:
        raise GuestImageError(f"apt-get download produced no .deb for {', '.join(missing)}")
    return have


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


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
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


def _prune(root: Path, patterns: tuple[str, ...]) -> None:
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


def _check_libraries(root: Path) -> None:
    """Every dynamic ELF file's NEEDED libraries must be in the tree."""
    present = {p.name for d in LIB_DIRS if (root / d).is_dir() for p in (root / d).iterdir()}
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


def _python_in_tree(root: Path, *args: str) -> None:
    """Run the tree's own interpreter through the tree's own dynamic loader."""
    loader = root / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    env = {"PYTHONHOME": str(root / "usr"), "LC_ALL": "C.UTF-8"}
    _run(
        [str(loader), "--library-path", libs, str(root / "usr/bin" / PYTHON), "-S", *args],
        env=env,
        timeout=300,
    )


def _assemble(root: Path, kernel_tree: Path, kernel_release: str, recipe: Recipe) -> None:
    _prune(root, recipe.prune)
    moddir = kernel_tree / "lib/modules" / kernel_release
    modules = _module_closure(moddir, recipe.modules)
    (root / "lib/modules/provisiond").mkdir(parents=True)
    for name, data in modules:
        (root / "lib/modules/provisiond" / f"{name}.ko").write_bytes(data)
    (root / "etc/provisiond").mkdir(parents=True)
    (root / "etc/provisiond/modules").write_text("".join(f"{n}\n" for n, _ in modules))
    for dest, mode, content in recipe.files:
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        (root / dest).write_bytes(content)
        (root / dest).chmod(mode)
    for d, mode in DIRS.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(mode)
    for link, target in SYMLINKS.items():
        (root / link).symlink_to(target)
    busybox = root / "bin/busybox"
    applets = _run([str(busybox), "--list-full"], timeout=30).split()
    for applet in applets:  # every applet at its usual path, never over a real program
        path = root / applet
        if not path.exists() and not path.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to("/bin/busybox")
    _check_libraries(root)
    _python_in_tree(root, "-c", f"import {SMOKE_IMPORTS}")
    _python_in_tree(
        root,
        "-m",
        "compileall",
        "-q",
        "-s",
        str(root),
        "-p",
        "/",
        "--invalidation-mode",
        "unchecked-hash",
        str(root / "usr/lib" / PYTHON),
        str(root / "usr/lib/provisiond"),
    )


def _cpio_entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield os.path.relpath(path, root), os.lstat(path)


def write_cpio_gz(root: Path, out: Path) -> None:
    """A gzip'd newc cpio of ``root`` (owner root, mtime 0) plus the DEVICES nodes."""

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
            sorted(DEVICES.items()), start=ino + 1
        ):
            header(f, name, extra, mode, 0, (major, minor))
        header(f, "TRAILER!!!", 0, 0, 0, (0, 0))


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROVISIOND_IMAGE_CACHE") or DEFAULT_CACHE)


def _image(out: Path, key: str, recipe: Recipe, built: bool) -> GuestImage:
    kernel, initrd = out / "vmlinuz", out / "initrd.img"
    size = kernel.stat().st_size + initrd.stat().st_size
    return GuestImage(kernel, initrd, key, built, recipe.kernel_args, size)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise GuestImageError(
                    f"{path} stayed locked for {LOCK_WAIT:.0f} s",
                    hint="another build of this recipe is stuck; stop it",
                ) from None
            time.sleep(1)


def build_guest_image(
    cache_dir: Path | None = None, *, force: bool = False, log: Callable[[str], None] | None = None
) -> GuestImage:
    """Build the guest image, or return the cached one for the same recipe and versions."""
    say = log or (lambda _msg: None)
    cache = cache_dir or default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestImageError(
            f"cannot create the image cache {cache}: {exc.strerror}",
            hint="set PROVISIOND_IMAGE_CACHE to a writable directory",
        ) from exc
    recipe = default_recipe()
    versions = resolve_versions(recipe)
    key = recipe_hash(recipe, versions)
    out = cache / key
    if out.is_dir() and not force:
        return _image(out, key, recipe, built=False)
    fd = _lock(cache / f"{key}.lock")
    try:
        if out.is_dir() and not force:  # another process built it while we waited
            return _image(out, key, recipe, built=False)
        for stale in cache.glob(f".build-{key}-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        debs = _download(versions, cache / "debs", say)
        kernel_pkg = next(p for p in versions if p.startswith("linux-image-"))
        release = kernel_pkg.removeprefix("linux-image-")
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".build-{key}-") as tmp:
            work = Path(tmp)
            root, kernel_tree, result = work / "root", work / "kernel", work / "out"
            for pkg, deb in sorted(debs.items()):
                _run(["dpkg-deb", "-x", str(deb), str(kernel_tree if pkg == kernel_pkg else root)])
            say(f"assembling the ramdisk (kernel {release})")
            _assemble(root, kernel_tree, release, recipe)
            result.mkdir()
            shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{release}", result / "vmlinuz")
            write_cpio_gz(root, result / "initrd.img")
            (result / "recipe.json").write_text(json.dumps({"versions": versions}, indent=2) + "\n")
            if out.is_dir():  # --force: replace the old build
                shutil.rmtree(out)
            result.rename(out)
        say(f"built {out}")
        return _image(out, key, recipe, built=True)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisiond.rack.guest_image",
        description="Build (or reuse) the provisiond guest image.",
    )
    parser.add_argument("--cache", type=Path, help=f"cache directory (default {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        image = build_guest_image(
            args.cache, force=args.force, log=lambda m: print(m, file=sys.stderr)
        )
    except GuestImageError as exc:
        print(
            f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr
        )
        return 1
    how = "built" if image.built else "reused from the cache"
    print(f"kernel       {image.kernel} ({image.kernel.stat().st_size / 1e6:.1f} MB)")
    print(f"initrd       {image.initrd} ({image.initrd.stat().st_size / 1e6:.1f} MB)")
    print(f"kernel_args  {image.kernel_args}")
    print(f"recipe       {image.recipe_hash}, {how} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
