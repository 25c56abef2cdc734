"""A real Debian 12 disk image for the virtual rack: GPT, GRUB for BIOS and UEFI, cloud-init.

Built from Debian packages only: ``mmdebstrap --variant=minbase`` with no mirror
argument (it then uses deb.debian.org, the archive the host's apt uses, plus the
updates and security suites), then laid out on one disk without mounting its
partitions (:mod:`provisiond.rack.disk_layout` holds those steps)::

    image = build_disk_image()           # or: provisiond rack disk-image build
    image.raw, image.gz, image.manifest  # debian-12.raw, debian-12.raw.gz, manifest.json

The disk (2 GiB virtual) boots unchanged under SeaBIOS and OVMF: p1 1 MiB BIOS boot
partition (GRUB's core image), p2 100 MiB ESP (``EFI/BOOT/BOOTX64.EFI`` and a stub
``grub.cfg``), p3 ext4 root, last, so cloud-init's growpart can grow it to fill a
bigger disk. Both GRUB images find the root by filesystem UUID and read
``/boot/grub/grub.cfg``, which boots ``/vmlinuz`` and ``/initrd.img`` (symlinks the
kernel package keeps current) with the console on tty0 and ttyS0.

What leaks from the build host is reset: hostname, hosts, resolv.conf, SSH host keys,
machine-id (empty, so systemd treats the first boot as one), the random seed. cloud-init
gets DESIGN.md's measured fixes (``locale: C.UTF-8``, ``manage_etc_hosts: true``,
``ssh_genkeytypes: [ed25519]``, e2scrub_reap masked) and no seed: the deploy writes one
file into ``/etc/cloud/cloud.cfg.d/``, e.g.::

    datasource_list: [NoCloud]
    datasource: {NoCloud: {seedfrom: "http://DAEMON/seed/TOKEN/"}}

A single-entry ``datasource_list`` makes ds-identify choose NoCloud on real hardware
without SMBIOS strings or a config drive. Without a seed, cloud-init disables itself;
sshd then makes its own ed25519 host key (a drop-in) so the image is still reachable.

Caching follows :mod:`provisiond.rack.guest_image`: the recipe (constants below) plus
the candidate versions of the included packages hash to a key; output lands in
``<cache>/disk-<key>/`` renamed into place whole, under a lock file. A dependency
that changes without any included package changing does not trigger a rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisiond.rack import disk_layout as dl
from provisiond.rack.build_cache import cached_build, ensure_cache
from provisiond.rack.disk_layout import DiskImageError as DiskImageError  # re-exported
from provisiond.rack.guest_image import default_cache_dir

BUILDER_VERSION = 1
SUITE = "bookworm"
NAME = "debian-12"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
PACKAGES = (
    KERNEL_META_PACKAGE, "systemd-sysv", "udev", "openssh-server", "cloud-init",
    "cloud-guest-utils", "ifupdown", "isc-dhcp-client", "initramfs-tools",
    "grub-pc-bin", "grub-efi-amd64-bin",
    "fdisk",  # sfdisk: growpart's GPT backend
    "sudo",  # cloud-init's default user gets a sudo rule
)  # fmt: skip
DISK_BYTES = 2 * 1024 * dl.MIB
KERNEL_ARGS = "ro console=tty0 console=ttyS0,115200n8"
ROOT_LABEL = "debian-root"
GRUB_CFG = """\
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_gpt
insmod ext2
insmod gzio
menuentry 'Debian GNU/Linux 12' {{
    search --no-floppy --fs-uuid --set=root {root_uuid}
    echo 'Loading Linux ...'
    linux /vmlinuz root=UUID={root_uuid} {kernel_args}
    initrd /initrd.img
}}
"""
ESP_GRUB_CFG = """\
# GRUB reads ($root)/boot/grub/grub.cfg (its early config finds the root by UUID).
search.fs_uuid {root_uuid} root
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
"""
FSTAB = """\
UUID={root_uuid} / ext4 errors=remount-ro 0 1
UUID={esp_uuid} /boot/efi vfat umask=0077,nofail,x-systemd.device-timeout=10s 0 2
"""
CLOUD_CFG = """\
# provisiond: measured fixes (DESIGN.md, "cloud-init under TCG"). No seed here: the
# deploy writes datasource_list and NoCloud seedfrom into another file beside this one.
locale: C.UTF-8
manage_etc_hosts: true
ssh_genkeytypes: [ed25519]
"""
# sshd without any host key (cloud-init disabled: no seed) makes one ed25519 key.
SSH_DROPIN = """\
[Service]
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || \
ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
"""
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
MASKED_UNITS = ("e2scrub_reap.service",)
MMDEBSTRAP_TIMEOUT = 1200.0  # s; measured 87 s with a warm network
LOCK_WAIT = 1800.0


@dataclass(frozen=True)
class DiskImage:
    raw: Path
    gz: Path
    manifest: Path
    recipe_hash: str
    built: bool  # False when reused from the cache

    def info(self) -> dict[str, Any]:
        """The manifest: sizes, sha256 of raw and gz, partitions, UUIDs, versions."""
        data: dict[str, Any] = json.loads(self.manifest.read_text())
        return data


def recipe_hash(versions: dict[str, str]) -> str:
    """A 16-hex-digit key over the recipe constants and the resolved package versions."""
    doc = {
        "version": BUILDER_VERSION,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "disk_bytes": DISK_BYTES,
        "kernel_args": KERNEL_ARGS,
        "texts": [GRUB_CFG, ESP_GRUB_CFG, FSTAB, CLOUD_CFG, SSH_DROPIN, HOSTS],
        "masked": list(MASKED_UNITS),
        "grub_modules": [list(dl.GRUB_BIOS_MODULES), list(dl.GRUB_EFI_MODULES)],
        "versions": dict(sorted(versions.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def resolve_versions() -> dict[str, str]:
    """Candidate version of each included package and of the kernel the meta package names."""
    depends = dl.run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=120)
    kernels = re.findall(r"Depends: (linux-image-\S+-cloud-amd64)$", depends, re.M)
    names = (*PACKAGES, *kernels[:1])
    versions: dict[str, str] = {}
    package = ""
    for line in dl.run(["apt-cache", "policy", *names], timeout=120).splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            package = line[:-1]
        elif line.strip().startswith("Candidate:"):
            versions[package] = line.split(":", 1)[1].strip()
    missing = [n for n in names if versions.get(n, "(none)") == "(none)"] or ([] if kernels else [
        f"the kernel {KERNEL_META_PACKAGE} depends on"
    ])  # fmt: skip
    if missing:
        raise DiskImageError(
            f"apt has no candidate for {', '.join(missing)}",
            hint="run `apt-get update`; the packages are in Debian bookworm main",
        )
    return versions


def _bootstrap(tree: Path, log: Callable[[str], None]) -> None:
    log(f"mmdebstrap {SUITE} ({len(PACKAGES)} packages plus dependencies) into {tree}")
    cmd = [
        "mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(PACKAGES)}",
        SUITE, str(tree),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=MMDEBSTRAP_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise DiskImageError(
            "mmdebstrap not found", hint="run scripts/bootstrap.sh as root (it installs it)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DiskImageError(f"mmdebstrap took over {MMDEBSTRAP_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        raise DiskImageError(
            f"mmdebstrap failed (exit {done.returncode}): {' | '.join(tail)}",
            hint="it must run as root with the network to deb.debian.org",
        )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def _configure(tree: Path, root_uuid: str, esp_uuid: str) -> str:
    """Reset host leaks, add cloud-init/ssh/fstab/GRUB config; return the kernel release."""
    _write(tree / "etc/hostname", "localhost\n")
    _write(tree / "etc/hosts", HOSTS)
    _write(tree / "etc/resolv.conf", "")
    _write(tree / "etc/machine-id", "", 0o444)
    for leak in (
        *tree.glob("etc/ssh/ssh_host_*"),
        tree / "var/lib/dbus/machine-id",
        tree / "var/lib/systemd/random-seed",
    ):
        if leak.is_symlink() or leak.exists():
            leak.unlink()
    _write(tree / "etc/fstab", FSTAB.format(root_uuid=root_uuid, esp_uuid=esp_uuid))
    (tree / "boot/efi").mkdir(parents=True, exist_ok=True)
    _write(tree / "etc/cloud/cloud.cfg.d/90_provisiond.cfg", CLOUD_CFG)
    _write(tree / "etc/systemd/system/ssh.service.d/provisiond-hostkey.conf", SSH_DROPIN)
    for unit in MASKED_UNITS:
        masked = tree / "etc/systemd/system" / unit
        if masked.is_symlink() or masked.exists():
            masked.unlink()
        masked.symlink_to("/dev/null")
    kernels = sorted(tree.glob("boot/vmlinuz-*"))
    if not kernels:
        raise DiskImageError("mmdebstrap installed no kernel in /boot")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    if not (tree / f"boot/initrd.img-{release}").is_file():
        raise DiskImageError(f"no initramfs for {release}", hint="is initramfs-tools installed?")
    for link, target in (("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")):
        path = tree / link
        if not path.exists():  # linux-base makes these; make them if it did not
            if path.is_symlink():
                path.unlink()
            path.symlink_to(f"boot/{target}-{release}")
    grub = tree / "boot/grub"
    for fmt in ("i386-pc", "x86_64-efi"):
        (grub / fmt).mkdir(parents=True, exist_ok=True)
        for mod in (tree / "usr/lib/grub" / fmt).iterdir():
            if mod.suffix in (".mod", ".lst"):
                shutil.copyfile(mod, grub / fmt / mod.name)
    _write(grub / "grub.cfg", GRUB_CFG.format(root_uuid=root_uuid, kernel_args=KERNEL_ARGS))
    return release


def _image(out: Path, key: str, built: bool) -> DiskImage:
    return DiskImage(out / f"{NAME}.raw", out / f"{NAME}.raw.gz", out / "manifest.json", key, built)


def _build(work: Path, versions: dict[str, str], key: str, log: Callable[[str], None]) -> Path:
    started = time.monotonic()
    tree, result = work / "tree", work / "out"
    result.mkdir()
    _bootstrap(tree, log)
    root_uuid, esp_id = str(uuid.uuid4()), os.urandom(4).hex().upper()
    esp_uuid = f"{esp_id[:4]}-{esp_id[4:]}"
    release = _configure(tree, root_uuid, esp_uuid)
    layout = dl.Layout(DISK_BYTES)
    raw = result / f"{NAME}.raw"
    log("laying out the disk: GPT, GRUB (i386-pc, x86_64-efi), ESP, ext4 root")
    dl.partition(raw, layout)
    core, efi = dl.grub_images(tree, work, root_uuid)
    dl.bios_setup(raw, tree, core, work)
    esp_files = {
        "EFI/BOOT/BOOTX64.EFI": efi,
        "EFI/BOOT/grub.cfg": ESP_GRUB_CFG.format(root_uuid=root_uuid).encode(),
    }
    dl.make_esp(work / "esp.img", layout.esp_bytes, esp_id, esp_files)
    dl.place(work / "esp.img", raw, layout.esp_offset)
    dl.make_root_fs(tree, work / "root.img", layout.root_bytes, root_uuid, ROOT_LABEL)
    shutil.rmtree(tree)  # ~520 MB; the filesystem holds it now
    dl.place(work / "root.img", raw, layout.root_offset)
    (work / "root.img").unlink()
    log("compressing (pigz -6) and hashing")
    gz = result / f"{NAME}.raw.gz"
    raw_sha, gz_sha = dl.gzip_and_hash(raw, gz)
    manifest = {
        "name": NAME,
        "recipe_hash": key,
        "os_family": "debian",
        "os_release": "12",
        "firmware": "both",
        "format": "raw",
        "served": gz.name,
        "virtual_size": DISK_BYTES,
        "raw_allocated": raw.stat().st_blocks * 512,
        "gz_size": gz.stat().st_size,
        "sha256_raw": raw_sha,
        "sha256_gz": gz_sha,
        "kernel": release,
        "root_uuid": root_uuid,
        "esp_uuid": esp_uuid,
        "partitions": [
            {"number": n, "name": name, "offset": offset, "size": size}
            for n, name, offset, size in (
                (1, "bios-boot", layout.bios_boot_offset, layout.bios_boot_bytes),
                (2, "esp", layout.esp_offset, layout.esp_bytes),
                (3, "root", layout.root_offset, layout.root_bytes),
            )
        ],
        "cloud_init": True,
        "versions": versions,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (result / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return result


def build_disk_image(
    cache_dir: Path | None = None, *, force: bool = False, log: Callable[[str], None] | None = None
) -> DiskImage:
    """Build the Debian 12 disk image, or return the cached one for the same recipe."""
    say = log or (lambda _msg: None)
    if os.geteuid() != 0:
        raise DiskImageError(
            "building the disk image needs root", hint="mmdebstrap runs in root mode"
        )
    cache = ensure_cache(cache_dir or default_cache_dir(), DiskImageError)
    versions = resolve_versions()
    key = recipe_hash(versions)
    out, built = cached_build(
        cache,
        f"disk-{key}",
        done=lambda out: (out / "manifest.json").is_file(),
        build=lambda work: _build(work, versions, key, say),
        force=force,
        lock_wait_s=LOCK_WAIT,
        error=DiskImageError,
    )
    if built:
        say(f"built {out}")
    return _image(out, key, built=built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisiond.rack.disk_image",
        description="Build (or reuse) the Debian 12 disk image for the virtual rack.",
    )
    parser.add_argument("--cache", type=Path, help="cache directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        image = build_disk_image(
            args.cache, force=args.force, log=lambda m: print(m, file=sys.stderr)
        )
    except DiskImageError as exc:
        print(
            f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr
        )
        return 1
    info = image.info()
    how = "built" if image.built else "reused from the cache"
    print(f"raw       {image.raw} ({info['raw_allocated']} bytes allocated)")
    print(f"gz        {image.gz} ({info['gz_size']} bytes)")
    print(f"manifest  {image.manifest}")
    print(f"recipe    {image.recipe_hash}, {how} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
