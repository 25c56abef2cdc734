"""The disk image's file-level steps: GPT, ESP, GRUB for BIOS and UEFI, ext4 root, gzip.

:mod:`provisiond.rack.disk_image` owns the recipe, the cache and the build's order of
steps; this module turns a finished root tree into one whole-disk image without mounting
any of its partitions, because the host kernel here has no partition-table parsing,
no vfat, no device-mapper and no NBD (DESIGN.md, "Disk images"):

- :func:`partition`: a sparse file with a GPT made by ``sgdisk`` (1 MiB BIOS boot
  partition, 100 MiB ESP, the rest ext4 root; everything MiB-aligned);
- :func:`make_root_fs`: ``mkfs.ext4 -d TREE`` fills the filesystem from the tree as
  it creates it, into a file that :func:`place` copies into the image (``dd
  conv=sparse``, so holes stay holes);
- :func:`make_esp`: ``mkfs.vfat -C`` plus mtools ``mmd``/``mcopy``;
- :func:`grub_images`: ``grub-mkimage`` for i386-pc and x86_64-efi from the tree's own
  GRUB modules, each with an early config that finds the root by filesystem UUID, so
  neither needs ``grub-install`` (which wants block devices) or ``grub-mkconfig``
  (which silently writes no entry on a loop-backed root);
- :func:`bios_setup`: ``grub-bios-setup -m device.map`` writes the MBR and the core
  image into the BIOS boot partition of the image *file* (its ``-d`` folder sits on a
  scratch loop-mounted ext2 file: the only mount, and the only root-only step here
  besides mmdebstrap);
- :func:`gzip_and_hash`: ``pigz`` (both CPUs) and the sha256 of the raw and gz files.

Errors are :class:`DiskImageError`, defined here because this module sits below
``disk_image`` in the import graph; ``disk_image`` re-exports it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisiond.errors import ProvisiondError

__all__ = [
    "MIB",
    "DiskImageError",
    "Layout",
    "bios_setup",
    "grub_images",
    "gzip_and_hash",
    "make_esp",
    "make_root_fs",
    "partition",
    "place",
    "run",
    "sha256_file",
]

MIB = 1024 * 1024
SECTOR = 512
GPT_RESERVED = 1 * MIB  # protective MBR + primary GPT before p1, backup GPT after the root
# Modules linked into the boot images; everything else loads from ($root)/boot/grub.
GRUB_BIOS_MODULES = ("biosdisk", "part_gpt", "ext2", "search_fs_uuid", "normal", "configfile")
GRUB_EFI_MODULES = (
    "part_gpt", "ext2", "fat", "search_fs_uuid", "normal", "configfile", "linux",
    "gzio", "echo", "test", "all_video", "efi_gop", "serial", "terminal",
)  # fmt: skip
GRUB_BIOS_SETUP = Path("/usr/lib/grub/i386-pc/grub-bios-setup")  # from grub-pc-bin


class DiskImageError(ProvisiondError):
    code = "disk_image_failed"


@dataclass(frozen=True)
class Layout:
    """Byte offsets and sizes of the three partitions in a disk of ``disk_bytes``."""

    disk_bytes: int
    bios_boot_bytes: int = 1 * MIB
    esp_bytes: int = 100 * MIB

    @property
    def bios_boot_offset(self) -> int:
        return GPT_RESERVED

    @property
    def esp_offset(self) -> int:
        return self.bios_boot_offset + self.bios_boot_bytes

    @property
    def root_offset(self) -> int:
        return self.esp_offset + self.esp_bytes

    @property
    def root_bytes(self) -> int:
        return self.disk_bytes - GPT_RESERVED - self.root_offset


def run(cmd: list[str], *, timeout: float = 600.0, cwd: Path | None = None) -> str:
    """Run a host tool; a failure or a timeout becomes a DiskImageError with its output."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise DiskImageError(
            f"{cmd[0]} not found", hint="run scripts/bootstrap.sh as root (it installs it)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DiskImageError(f"{' '.join(cmd[:3])} … took over {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        raise DiskImageError(
            f"{' '.join(cmd[:4])} … failed (exit {done.returncode}): {' | '.join(tail)}"
        )
    return done.stdout


def partition(image: Path, layout: Layout) -> None:
    """Create the sparse image file and its GPT (BIOS boot, ESP, root)."""
    with image.open("wb") as f:
        f.truncate(layout.disk_bytes)

    def span(offset: int, size: int) -> str:
        return f"{offset // SECTOR}:{(offset + size) // SECTOR - 1}"

    run([
        "sgdisk", "--clear",
        "-n", f"1:{span(layout.bios_boot_offset, layout.bios_boot_bytes)}",
        "-t", "1:EF02", "-c", "1:bios-boot",
        "-n", f"2:{span(layout.esp_offset, layout.esp_bytes)}",
        "-t", "2:EF00", "-c", "2:esp",
        "-n", f"3:{span(layout.root_offset, layout.root_bytes)}",
        "-t", "3:8304", "-c", "3:root",  # 8304: Linux x86-64 root (discoverable partitions)
        str(image),
    ], timeout=60)  # fmt: skip


def make_root_fs(tree: Path, out: Path, size: int, uuid: str, label: str) -> None:
    """An ext4 filesystem of ``size`` bytes in ``out``, filled from ``tree``."""
    run([
        "mkfs.ext4", "-q", "-F", "-U", uuid, "-L", label, "-d", str(tree),
        "-E", "nodiscard", str(out), f"{size // 1024}k",
    ], timeout=600)  # fmt: skip


def make_esp(out: Path, size: int, volume_id: str, files: dict[str, bytes]) -> None:
    """A FAT32 ESP of ``size`` bytes in ``out`` holding ``files`` (path → content)."""
    run(["mkfs.vfat", "-C", "-F", "32", "-n", "ESP", "-i", volume_id, str(out), str(size // 1024)])
    staging = out.parent / "esp-files"
    made: set[str] = set()
    for path, content in sorted(files.items()):
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in made:
                run(["mmd", "-i", str(out), f"::/{folder}"], timeout=30)
                made.add(folder)
        local = staging / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        run(["mcopy", "-i", str(out), str(local), f"::/{path}"], timeout=30)
    shutil.rmtree(staging)


def grub_images(tree: Path, work: Path, root_uuid: str) -> tuple[bytes, bytes]:
    """(i386-pc core.img, x86_64-efi BOOTX64.EFI) built from the tree's GRUB modules."""
    early = work / "early.cfg"
    early.write_text(f"search.fs_uuid {root_uuid} root\nset prefix=($root)/boot/grub\n")
    out = []
    for fmt, modules, name in (
        ("i386-pc", GRUB_BIOS_MODULES, "core.img"),
        ("x86_64-efi", GRUB_EFI_MODULES, "BOOTX64.EFI"),
    ):
        target = work / name
        run([
            "grub-mkimage", "-O", fmt, "-d", str(tree / "usr/lib/grub" / fmt),
            "-c", str(early), "-p", "/boot/grub", "-o", str(target), *modules,
        ], timeout=60)  # fmt: skip
        out.append(target.read_bytes())
    return out[0], out[1]


def bios_setup(image: Path, tree: Path, core: bytes, work: Path) -> None:
    """Write GRUB's MBR and core image (into the BIOS boot partition) of ``image``.

    grub-bios-setup insists on opening the device that holds its ``-d`` folder, though
    it only reads it, and this container may not open the host's disk (EPERM). So the
    folder lives on a scratch 8 MiB ext2 file mounted through a loop device, which the
    device map names as a second drive; both are released in a ``finally``.
    """
    scratch, mnt = work / "grub-bios.ext2", work / "grub-bios"
    with scratch.open("wb") as f:
        f.truncate(8 * MIB)
    run(["mkfs.ext2", "-q", "-F", str(scratch)], timeout=60)
    mnt.mkdir()
    loop = run(["losetup", "--find", "--show", str(scratch)], timeout=30).strip()
    try:
        run(["mount", "-t", "ext2", loop, str(mnt)], timeout=30)
        try:
            shutil.copyfile(tree / "usr/lib/grub/i386-pc/boot.img", mnt / "boot.img")
            (mnt / "core.img").write_bytes(core)
            device_map = work / "device.map"
            device_map.write_text(f"(hd0) {image}\n(hd1) {loop}\n")
            run([
                str(GRUB_BIOS_SETUP), "--skip-fs-probe", "-d", str(mnt),
                "-m", str(device_map), str(image),
            ], timeout=60)  # fmt: skip
        finally:
            run(["umount", str(mnt)], timeout=60)
    finally:
        run(["losetup", "--detach", loop], timeout=30)
    scratch.unlink()


def place(part: Path, image: Path, offset: int) -> None:
    """Copy a partition's file into the image at ``offset``, leaving zero blocks as holes."""
    run([
        "dd", f"if={part}", f"of={image}", "bs=4M", "conv=sparse,notrunc",
        "oflag=seek_bytes", f"seek={offset}", "status=none",
    ], timeout=300)  # fmt: skip


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_and_hash(raw: Path, gz: Path, level: int = 6) -> tuple[str, str]:
    """Write ``gz`` from ``raw`` with pigz; return (sha256 of raw, sha256 of gz)."""
    with gz.open("wb") as out:
        try:
            done = subprocess.run(
                ["pigz", f"-{level}", "-n", "-c", str(raw)],
                stdout=out, stderr=subprocess.PIPE, timeout=600, check=False,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise DiskImageError(
                "pigz not found", hint="run scripts/bootstrap.sh as root (it installs it)"
            ) from exc
    if done.returncode != 0:
        raise DiskImageError(f"pigz failed: {done.stderr.decode(errors='replace').strip()}")
    return sha256_file(raw), sha256_file(gz)
