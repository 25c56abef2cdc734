"""The release wipe on a running Debian whose root file system is the disk being wiped.

The virtual rack's Debian 12 disk image boots under QEMU (TCG) straight into a test
script as init, with its ext4 root on /dev/vda3 mounted read-write. The script runs
the real :data:`WIPE_SCRIPT` with nothing skipped (swapoff, sysrq emergency read-only
remount, partitions marked read-only before their ends are zeroed through the disk,
O_DIRECT writes and read-backs, sysrq power-off 2 s later). Once QEMU has powered
itself off, both ends of every partition and the disk must still be zero on the
image file, with no signature left: nothing (ext4's error recording included) wrote
the wiped superblock back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisiond.deploy.remote_ops import WIPE_SCRIPT
from provisiond.rack.disk_image import DiskImage, build_disk_image
from tests.support.disk_images import MIB

TOOLS = ("qemu-system-x86_64", "debugfs", "mmdebstrap", "sgdisk", "blkid")
BOOT_WAIT = 240.0  # s; measured ~12 s from start to power-off under TCG

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
mount -o remount,rw /
echo written > /root/before-wipe
echo "== mounted: $(grep ' / ' /proc/mounts)"
sh /root/wipe.sh
echo "== wipe exited $?: $(grep ' / ' /proc/mounts)"
dmesg | tail -1
lsblk
echo "== waiting for the power-off"
sleep 60
echo "== still up"
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the disk image is built as root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} (scripts/bootstrap.sh installs them)",
    ),
]


def debugfs(target: str, request: str, *, write: bool = False) -> None:
    subprocess.run(
        ["debugfs", *(["-w"] if write else []), "-R", request, target],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip


def test_a_mounted_root_is_wiped_and_nothing_is_written_back(tmp_path: Path) -> None:
    image: DiskImage = build_disk_image(log=lambda m: print(m, file=sys.stderr))
    info = image.info()
    parts = {f"vda{p['number']}": (int(p["offset"]), int(p["size"])) for p in info["partitions"]}
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(image.raw), str(disk)], check=True)
    root = f"{disk}?offset={parts['vda3'][0]}"
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    debugfs(root, f"dump /boot/vmlinuz-{info['kernel']} {kernel}")
    debugfs(root, f"dump /boot/initrd.img-{info['kernel']} {initrd}")
    (tmp_path / "init.sh").write_text(INIT)
    (tmp_path / "wipe.sh").write_text(WIPE_SCRIPT)
    debugfs(root, f"write {tmp_path / 'init.sh'} /wipe-test.sh", write=True)
    debugfs(root, "sif /wipe-test.sh mode 0100755", write=True)
    debugfs(root, f"write {tmp_path / 'wipe.sh'} /root/wipe.sh", write=True)

    qemu = subprocess.run(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "root=/dev/vda3 ro init=/wipe-test.sh console=ttyS0 panic=-1 quiet",
            "-drive", f"file={disk},format=raw,if=virtio", "-nic", "none",
        ],
        capture_output=True, text=True, errors="replace", timeout=BOOT_WAIT, check=False,
    )  # fmt: skip
    log = qemu.stdout + qemu.stderr
    assert "== mounted: /dev/vda3 / ext4 rw," in log, log[-3000:]
    assert "wiped: vda1 vda2 vda3 vda" in log, log[-3000:]
    assert "== wipe exited 0: /dev/vda3 / ext4 ro," in log, log[-3000:]
    assert "sysrq: Power Off" in log and "== still up" not in log, log[-3000:]

    regions = {"vda": (0, int(info["virtual_size"])), **parts}
    with disk.open("rb") as handle:
        for name, (offset, size) in regions.items():
            span = min(MIB, size)
            for at in (offset, offset + size - span):
                handle.seek(at)
                assert handle.read(span) == bytes(span), (name, at)
            probe = subprocess.run(
                ["blkid", "-p", "-O", str(offset), str(disk)], capture_output=True, text=True
            )
            assert probe.returncode == 2, (name, probe.stdout)  # 2: nothing found
