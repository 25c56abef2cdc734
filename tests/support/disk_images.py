"""Small real disk images for the registration tests, built without root or mounts.

A root tree is made in a folder, ``mkfs.ext4 -d`` turns it into a file system in a
file, and that file is copied into a partition laid out by ``sgdisk`` (GPT) or written
by hand (MBR, with an extended partition and its EBR chain): the same tools and the
same no-mount path as the Debian disk image of the virtual rack.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

MIB = 1 << 20
#: A payload that does not compress away, so every format carries real data.
MARKER = random.Random(12).randbytes(64 << 10)
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def root_tree(
    base: Path,
    *,
    cloud_init: str = "file",
    disabled: bool = False,
    os_release: str = OS_RELEASE,
) -> Path:
    """A root file system tree laid out like Debian's (merged /usr, linked os-release).

    ``cloud_init``: ``file`` (/usr/bin/cloud-init), ``link`` (a short symlink to it),
    ``long-link`` (a symlink too long to live in the inode), ``dangling`` (a symlink
    to nothing), ``no-config`` (the program but no /etc/cloud) or ``none``.
    """
    tree = base / "tree"
    for folder in ("etc", "usr/bin", "usr/lib/python3/dist-packages", "usr/share"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "usr/lib/os-release").write_text(os_release)
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    (tree / "usr/share/marker").write_bytes(MARKER)
    program = tree / "usr/bin/cloud-init"
    real = tree / "usr/lib/python3/dist-packages" / ("c" * 80) / "cloud-init"
    if cloud_init in ("file", "no-config"):
        program.write_text("#!/usr/bin/python3\n# cloud-init\n")
    elif cloud_init in ("link", "long-link"):
        real.parent.mkdir()
        real.write_text("#!/usr/bin/python3\n")
        target = "/" + str(real.relative_to(tree))
        program.symlink_to(target if cloud_init == "long-link" else "../lib/ci")
        if cloud_init == "link":
            (tree / "usr/lib/ci").symlink_to(target)  # two hops, relative then absolute
    elif cloud_init == "dangling":
        program.symlink_to("/usr/lib/nothing-here")
    if cloud_init not in ("none", "no-config"):
        (tree / "etc/cloud").mkdir()
        (tree / "etc/cloud/cloud.cfg").write_text("datasource_list: [NoCloud, None]\n")
    if disabled:
        (tree / "etc/cloud/cloud-init.disabled").write_text("")
    return tree


def ext4(path: Path, size: int, tree: Path | None = None) -> Path:
    """An ext4 file system of ``size`` bytes in the file ``path``, filled from ``tree``."""
    args = ["-d", str(tree)] if tree else []
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", *args, str(path), f"{size // 1024}k"],
        check=True,
        capture_output=True,
    )
    return path


def put(disk: Path, offset: int, content: Path) -> None:
    with disk.open("r+b") as out:
        out.seek(offset)
        out.write(content.read_bytes())


def gpt_disk(path: Path, size: int, partitions: list[tuple[int, str, Path | None]]) -> list[int]:
    """A GPT disk with ``(size, sgdisk type code, content file)`` partitions; their offsets."""
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    argv = ["sgdisk", "--clear"]  # no -q: with it and no tty, sgdisk writes nothing
    for number, (part_size, code, _) in enumerate(partitions, start=1):
        argv += [f"-n{number}:0:+{part_size // 1024}K", f"-t{number}:{code}"]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)
    offsets = []
    for number, (_, _, content) in enumerate(partitions, start=1):
        info = subprocess.run(
            ["sgdisk", "-i", str(number), str(path)], check=True, capture_output=True, text=True
        ).stdout
        first = int(info.split("First sector: ")[1].split()[0])
        offsets.append(first * 512)
        if content is not None:
            put(path, first * 512, content)
    return offsets


def _mbr_entry(kind: int, first_lba: int, sectors: int) -> bytes:
    head = bytes([0, 0, 0, 0, kind, 0, 0, 0])
    return head + first_lba.to_bytes(4, "little") + sectors.to_bytes(4, "little")


def mbr_disk(path: Path, size: int, root: Path | None, *, logical: bool = False) -> int:
    """An MBR disk: partition 1 (0x83) from 1 MiB holding ``root``, or, with ``logical``,
    an extended partition 1 whose first logical partition (5) holds it; its offset."""
    path.unlink(missing_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    sectors = size // 512
    with path.open("r+b") as disk:
        disk.seek(446)
        if logical:  # extended from 1 MiB; its EBR there; logical 5 one MiB further on
            disk.write(_mbr_entry(0x05, 2048, sectors - 2048))
            disk.seek(2048 * 512 + 446)
            disk.write(_mbr_entry(0x83, 2048, sectors - 4096))
            disk.seek(2048 * 512 + 510)
            disk.write(b"\x55\xaa")
        else:
            disk.write(_mbr_entry(0x83, 2048, sectors - 2048))
        disk.seek(510)
        disk.write(b"\x55\xaa")
    offset = (4096 if logical else 2048) * 512
    if root is not None:
        put(path, offset, root)
    return offset


def debian_like(
    base: Path, size: int = 8 * MIB, *, cloud_init: str = "file", disabled: bool = False
) -> Path:
    """A GPT disk like the rack's Debian image, shrunk: BIOS boot, a blank ESP-typed
    partition and an ext4 root (partition 3) from :func:`root_tree`."""
    base.mkdir(parents=True, exist_ok=True)
    tree = root_tree(base, cloud_init=cloud_init, disabled=disabled)
    root = ext4(base / "root.ext4", size - 4 * MIB, tree)
    disk = base / "disk.img"
    gpt_disk(disk, size, [(MIB, "ef02", None), (MIB, "ef00", None), (size - 4 * MIB, "8304", root)])
    return disk
