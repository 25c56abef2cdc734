"""The guest image for the virtual rack: one kernel and one ramdisk for inspection and deploy.

Built from Debian packages only (``apt-get download`` plus ``dpkg-deb -x``; no mirror
URL, no debootstrap), so it needs nothing but the host's configured apt sources::

    image = build_guest_image()          # or: python -m provisiond.rack.guest_image
    image.kernel, image.initrd, image.kernel_args

The ramdisk carries busybox, dropbear, python3.11 with its standard library, the few
kernel modules a virtual or simple physical machine needs for its NIC and disk, two
programs from ``provisiond/rack/guest/``: ``init`` (PID 1: network, host key) and
``phone_home.py`` (reads the NoCloud seed, starts sshd, calls provisiond back), and the
machine agent (``agent.py`` with its ``lldp.py``, :data:`AGENT_FILES`) in
``/opt/provisiond-agent``, where the daemon's agent install puts the same files.

A *recipe* (the constants below plus the guest files' content) and the package
versions apt resolves for it hash to a cache key: output lands in
``<cache>/<recipe_hash>/{vmlinuz,initrd.img}``, renamed into place whole, so a build is
redone only when the recipe or a package changes. A lock file serialises builders of
one recipe; downloaded .debs are kept in ``<cache>/debs/``. The cache defaults to
``$PROVISIOND_IMAGE_CACHE`` or /var/cache/provisiond/guest-images.

Checks at build time: every ELF file's NEEDED libraries must be in the tree, and the
extracted interpreter (run through the extracted dynamic loader) must import the
modules the agent uses (and the agent itself must import) while it precompiles the
standard library, so a guest does not compile bytecode under TCG on every boot.

This module is the recipe and the build's order of steps; the file-level steps (ELF
reading, kernel module closure, pruning, the library check, the cpio writer) live in
:mod:`provisiond.rack.guest_files`, whose :class:`GuestImageError` is re-exported here.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisiond.rack.build_cache import cached_build, ensure_cache
from provisiond.rack.guest_files import GuestImageError as GuestImageError  # re-exported
from provisiond.rack.guest_files import (
    check_libraries,
    module_closure,
    prune,
    write_cpio_gz,
)

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
# Plus their depends=. ext4 (and crc32c_generic, which its metadata checksums need
# but names only as the softdep "crypto-crc32c") lets the image writer mount the root
# file system it wrote, to seed cloud-init there.
MODULES = ("virtio_net", "virtio_pci", "virtio_blk", "e1000", "crc32c_generic", "ext4")
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
# Files from provisiond/agent/ → (path in the ramdisk, mode).
AGENT_FILES = {
    "agent.py": ("opt/provisiond-agent/agent.py", 0o755),
    "lldp.py": ("opt/provisiond-agent/lldp.py", 0o644),
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
    agent = importlib.resources.files("provisiond.agent")
    files = [
        (dest, mode, (folder / name).read_bytes())
        for folder, table in ((guest, GUEST_FILES), (agent, AGENT_FILES))
        for name, (dest, mode) in table.items()
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
    prune(root, recipe.prune)
    moddir = kernel_tree / "lib/modules" / kernel_release
    modules = module_closure(moddir, recipe.modules)
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
    check_libraries(root, LIB_DIRS)
    _python_in_tree(root, "-c", f"import {SMOKE_IMPORTS}")
    agent_dir = root / "opt/provisiond-agent"  # the agent finds lldp.py beside itself
    _python_in_tree(root, "-c", f"import sys; sys.path[0] = {str(agent_dir)!r}; import agent")
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
        str(agent_dir),
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("PROVISIOND_IMAGE_CACHE") or DEFAULT_CACHE)


def _image(out: Path, key: str, recipe: Recipe, built: bool) -> GuestImage:
    kernel, initrd = out / "vmlinuz", out / "initrd.img"
    size = kernel.stat().st_size + initrd.stat().st_size
    return GuestImage(kernel, initrd, key, built, recipe.kernel_args, size)


def build_guest_image(
    cache_dir: Path | None = None, *, force: bool = False, log: Callable[[str], None] | None = None
) -> GuestImage:
    """Build the guest image, or return the cached one for the same recipe and versions."""
    say = log or (lambda _msg: None)
    cache = ensure_cache(cache_dir or default_cache_dir(), GuestImageError)
    recipe = default_recipe()
    versions = resolve_versions(recipe)
    key = recipe_hash(recipe, versions)

    def build(work: Path) -> Path:
        debs = _download(versions, cache / "debs", say)
        kernel_pkg = next(p for p in versions if p.startswith("linux-image-"))
        release = kernel_pkg.removeprefix("linux-image-")
        root, kernel_tree, result = work / "root", work / "kernel", work / "out"
        for pkg, deb in sorted(debs.items()):
            _run(["dpkg-deb", "-x", str(deb), str(kernel_tree if pkg == kernel_pkg else root)])
        say(f"assembling the ramdisk (kernel {release})")
        _assemble(root, kernel_tree, release, recipe)
        result.mkdir()
        shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{release}", result / "vmlinuz")
        write_cpio_gz(root, result / "initrd.img", DEVICES)
        (result / "recipe.json").write_text(json.dumps({"versions": versions}, indent=2) + "\n")
        return result

    out, built = cached_build(
        cache, key, done=Path.is_dir, build=build, force=force, lock_wait_s=LOCK_WAIT,
        error=GuestImageError,
    )  # fmt: skip
    if built:
        say(f"built {out}")
    return _image(out, key, recipe, built=built)


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
