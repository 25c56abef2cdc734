"""The release wipe script, run for real against loop devices under dash and busybox sh.

A GPT disk image is attached as a loop device, and each partition as an offset loop
device (the host kernel cannot parse partition tables, DESIGN.md), then handed to
:data:`WIPE_SCRIPT` through ``WIPE_DEVICES``. Every region starts with 0xA5 at both
ends plus real signatures at both ends: the GPT and its backup, an ext4 superblock,
an md 0.90 superblock at a partition's end, swap and an LVM2 label at the start.
``WIPE_NO_SYSRQ=1`` skips swapoff and the emergency read-only remount, which would
act on this host. Under busybox, PATH holds only busybox's applets, as in the ramdisk.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisiond.deploy.remote_ops import WIPE_SCRIPT
from tests.support.disk_images import MIB, ext4

SECTOR = 512
DISK_SECTORS = 65536  # 32 MiB
#: name, first sector, sectors, sgdisk type: a BIOS boot, an ext4, an odd-sized md
#: member, one smaller than a MiB (swap), one of 1.5 MiB whose head and tail overlap.
PARTITIONS = [
    ("p1", 2048, 2048, "ef02"),
    ("p2", 4096, 16384, "8300"),
    ("p3", 20480, 12295, "fd00"),
    ("p4", 34816, 1024, "8200"),
    ("p5", 36864, 3072, "8e00"),
]
FILL = b"\xa5"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("losetup") is None, reason="needs root and losetup"
)


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    size: int
    device: str = ""


def _lvm_crc(data: bytes) -> int:
    """LVM2's label checksum: CRC-32 from 0xf597a6cf, no final inversion."""
    crc = 0xF597A6CF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def _ends(size: int) -> list[tuple[int, int]]:
    span = min(MIB, size)
    return [(0, span), (size - span, span)]


def build_disk(tmp_path: Path) -> tuple[Path, list[Region]]:
    disk = tmp_path / "disk.img"
    size = DISK_SECTORS * SECTOR
    with disk.open("wb") as handle:
        handle.truncate(size)
    regions = [
        Region(name, first * SECTOR, count * SECTOR) for name, first, count, _ in PARTITIONS
    ] + [Region("disk", 0, size)]  # partitions first, as the script orders a real disk
    with disk.open("r+b") as handle:
        for region in regions:
            for start, length in _ends(region.size):
                handle.seek(region.offset + start)
                handle.write(FILL * length)
    argv = ["sgdisk", "--clear"]
    for number, (_, first, count, code) in enumerate(PARTITIONS, start=1):
        argv += [f"-n{number}:{first}:{first + count - 1}", f"-t{number}:{code}"]
    subprocess.run([*argv, str(disk)], check=True, capture_output=True)
    by_name = {r.name: r for r in regions}
    root = ext4(tmp_path / "p2.ext4", by_name["p2"].size - MIB)  # its tail MiB stays 0xA5
    swap = tmp_path / "p4.swap"
    swap.write_bytes(bytes(by_name["p4"].size))
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    md = bytearray(4096)  # md 0.90: magic, version 0.90.0, set uuid
    struct.pack_into("<IIII", md, 0, 0xA92B4EFC, 0, 90, 0)
    struct.pack_into("<I", md, 20, 0x12345678)
    md_at = (by_name["p3"].size & ~0xFFFF) - 0x10000
    label = bytearray(SECTOR)  # LVM2 physical volume label in sector 1
    label[0:8], label[24:32] = b"LABELONE", b"LVM2 001"
    struct.pack_into("<QxxxxI", label, 8, 1, 32)
    label[32:64] = b"0123456789abcdefghijklmnopqrstuv"
    struct.pack_into("<I", label, 16, _lvm_crc(bytes(label[20:])))
    with disk.open("r+b") as handle:
        for name, at, data in (
            ("p2", 0, root.read_bytes()),
            ("p3", md_at, bytes(md)),
            ("p4", 0, swap.read_bytes()[: 64 << 10]),
            ("p5", SECTOR, bytes(label)),
        ):
            handle.seek(by_name[name].offset + at)
            handle.write(data)
    return disk, regions


def losetup(*args: str) -> str:
    return subprocess.run(
        ["losetup", "--find", "--show", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def attached(tmp_path: Path) -> Iterator[tuple[Path, list[Region]]]:
    """The disk and each partition as loop devices, detached afterwards even on failure."""
    disk, regions = build_disk(tmp_path)
    attached: list[Region] = []
    try:
        for region in regions:
            if region.name == "disk":
                device = losetup(str(disk))
            else:
                device = losetup(
                    "-o", str(region.offset), "--sizelimit", str(region.size), str(disk)
                )
            attached.append(Region(region.name, region.offset, region.size, device))
        yield disk, attached
    finally:
        for region in attached:
            subprocess.run(["losetup", "-d", region.device], check=False, capture_output=True)


def signatures(device: str) -> str:
    probe = subprocess.run(["blkid", "-p", device], capture_output=True, text=True, check=False)
    listed = subprocess.run(["wipefs", device], capture_output=True, text=True, check=True)
    return (probe.stdout + listed.stdout).strip()


@pytest.fixture(params=["dash", "busybox"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    if request.param == "dash":
        return ["/bin/sh", "-s"], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (scripts/bootstrap.sh installs busybox-static)")
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    subprocess.run([busybox, "--install", "-s", str(applets)], check=True)
    return [busybox, "sh", "-s"], {"PATH": str(applets)}


def run_wipe(shell: tuple[list[str], dict[str, str]], devices: list[str]) -> str:
    argv, env = shell
    result = subprocess.run(
        argv,
        input=WIPE_SCRIPT,
        env={**env, "WIPE_NO_SYSRQ": "1", "WIPE_DEVICES": " ".join(devices)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_both_ends_of_every_disk_and_partition_are_zeroed_and_signatures_gone(
    attached: tuple[Path, list[Region]], shell: tuple[list[str], dict[str, str]]
) -> None:
    disk, regions = attached
    found = {r.name: signatures(r.device) for r in regions}
    for name, kind in [("disk", "gpt"), ("p2", "ext4"), ("p3", "linux_raid_member"),
                       ("p4", "swap"), ("p5", "LVM2_member")]:  # fmt: skip
        assert kind in found[name], (name, found[name])  # control: the checkers see them
    middle = 12 * MIB  # inside p2, 4 MiB from its ends
    kept = disk.read_bytes()[middle - 4096 : middle + 4096]

    out = run_wipe(shell, [r.device for r in regions])

    line = next(x for x in out.splitlines() if x.startswith("wiped:"))
    assert line.split(":", 1)[1].split() == [r.device.rsplit("/", 1)[1] for r in regions]
    data = disk.read_bytes()
    for region in regions:
        for start, length in _ends(region.size):
            at = region.offset + start
            chunk = data[at : at + length]
            assert chunk == bytes(length), (region.name, start, len(chunk.strip(b"\0")))
        assert signatures(region.device) == "", (region.name, signatures(region.device))
    assert data[middle - 4096 : middle + 4096] == kept  # only the ends are written
    for region in regions:  # marked read-only, so the kernel writes no metadata back
        assert read_only(region.device), region.name

    again = run_wipe(shell, [r.device for r in regions])  # a retried release
    assert again.splitlines()[-1] == line
    assert disk.read_bytes()[middle - 4096 : middle + 4096] == kept


def read_only(device: str) -> bool:
    out = subprocess.run(["blockdev", "--getro", device], capture_output=True, text=True)
    return out.stdout.strip() == "1"


def test_a_read_only_device_is_reported_and_left_out(
    tmp_path: Path, shell: tuple[list[str], dict[str, str]]
) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(FILL * (3 * MIB))
    device = losetup("--read-only", str(image))
    try:
        argv, env = shell
        result = subprocess.run(
            argv, input=WIPE_SCRIPT, capture_output=True, text=True, timeout=60, check=False,
            env={**env, "WIPE_NO_SYSRQ": "1", "WIPE_DEVICES": device},
        )  # fmt: skip
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
    assert result.returncode == 0, result.stderr
    assert "wiped:\n" in result.stdout or result.stdout.strip().endswith("wiped:")
    assert f"skipped {device.rsplit('/', 1)[1]}: read-only" in result.stderr
    assert image.read_bytes() == FILL * (3 * MIB)
