"""The Debian 12 disk image, checked with host tools and booted from its disk under QEMU.

Structure is read without mounting anything (the host kernel has no partition-table
parsing and no vfat): ``sgdisk`` for the GPT, mtools with an ``@@offset`` for the ESP,
``debugfs`` with ``?offset=`` for the ext4 root. Then the image boots under TCG from a
qcow2 overlay (the cached image stays untouched) with SeaBIOS and with OVMF, and the
serial console must show GRUB loading the kernel and a getty's login prompt. The guest
has no network at all (``-nic none``); cloud-init finds no datasource, as expected.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisiond.rack.disk_image import DiskImage, build_disk_image
from provisiond.rack.qemu import OVMF_CODE, OVMF_VARS
from tests.support.procs import stop

TOOLS = ("mmdebstrap", "sgdisk", "mkfs.vfat", "mdir", "mtype", "debugfs", "grub-mkimage", "pigz")
BOOT_WAIT = 300.0  # s; login prompt under TCG, measured ~60-90 s

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap runs as root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} (scripts/bootstrap.sh installs them)",
    ),
]


@pytest.fixture(scope="module")
def image() -> DiskImage:
    started = time.monotonic()
    built = build_disk_image(log=lambda m: print(m, file=sys.stderr))
    how = "built" if built.built else "cached"
    print(f"disk image {how} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return built


def part(image: DiskImage, number: int) -> dict[str, int]:
    parts = image.info()["partitions"]
    assert isinstance(parts, list)
    found: dict[str, int] = next(p for p in parts if p["number"] == number)
    return found


def debugfs(image: DiskImage, request: str) -> str:
    fs = f"{image.raw}?offset={part(image, 3)['offset']}"
    done = subprocess.run(
        ["debugfs", "-R", request, fs], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_gpt_has_bios_boot_esp_and_root(image: DiskImage) -> None:
    out = subprocess.run(
        ["sgdisk", "-p", str(image.raw)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+(\w{4})\s+(\S+)$", out, re.M)
    assert [(n, code, name) for n, _s, _e, code, name in rows] == [
        ("1", "EF02", "bios-boot"),
        ("2", "EF00", "esp"),
        ("3", "8304", "root"),
    ], out
    assert int(rows[1][2]) - int(rows[1][1]) + 1 == 100 * 2048  # 100 MiB ESP
    assert image.raw.stat().st_size == 2 << 30
    assert image.raw.read_bytes()[:512][-2:] == b"\x55\xaa"  # GRUB's MBR (boot.img) in place


def test_esp_holds_bootx64_and_grub_cfg(image: DiskImage) -> None:
    esp = f"{image.raw}@@{part(image, 2)['offset']}"
    listing = subprocess.run(
        ["mdir", "-b", "-i", esp, "::/EFI/BOOT"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "BOOTX64.EFI" in listing and "grub.cfg" in listing.lower(), listing
    cfg = subprocess.run(
        ["mtype", "-i", esp, "::/EFI/BOOT/grub.cfg"], capture_output=True, text=True, timeout=30
    ).stdout
    assert f"search.fs_uuid {image.info()['root_uuid']}" in cfg


def test_root_is_debian_12_with_cloud_init_and_no_host_leaks(image: DiskImage) -> None:
    os_release = debugfs(image, "cat /usr/lib/os-release")  # /etc/os-release links here
    assert 'VERSION_ID="12"' in os_release and "ID=debian" in os_release
    status = debugfs(image, "cat /var/lib/dpkg/status")
    for pkg in ("cloud-init", "openssh-server", "systemd-sysv", "grub-efi-amd64-bin"):
        assert re.search(rf"^Package: {pkg}\nStatus: install ok installed$", status, re.M), pkg
    ssh = debugfs(image, "ls /etc/ssh")
    assert "ssh_host_" not in ssh and "sshd_config" in ssh
    assert debugfs(image, "cat /etc/machine-id") == ""
    assert debugfs(image, "cat /etc/hostname").strip() == "localhost"
    cloud = debugfs(image, "cat /etc/cloud/cloud.cfg.d/90_provisiond.cfg")
    assert "locale: C.UTF-8" in cloud and "ssh_genkeytypes: [ed25519]" in cloud
    for name in re.findall(r"\S+\.cfg", debugfs(image, "ls /etc/cloud/cloud.cfg.d")):
        text = debugfs(image, f"cat /etc/cloud/cloud.cfg.d/{name}")
        assert not re.search(r"^\s*(seedfrom|datasource_list):", text, re.M), name
    assert "seed" not in debugfs(image, "ls /var/lib/cloud")  # nothing baked in
    assert "/dev/null" in debugfs(image, "stat /etc/systemd/system/e2scrub_reap.service")
    grub_cfg = debugfs(image, "cat /boot/grub/grub.cfg")
    assert f"root=UUID={image.info()['root_uuid']}" in grub_cfg
    assert "normal.mod" in debugfs(image, "ls /boot/grub/x86_64-efi")


def test_gz_decompresses_to_the_raw_sha256(image: DiskImage) -> None:
    info = image.info()
    digest = hashlib.sha256()
    with gzip.open(image.gz, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == info["sha256_raw"]
    gz_digest = hashlib.sha256(image.gz.read_bytes()).hexdigest()
    assert gz_digest == info["sha256_gz"]
    assert info["firmware"] == "both" and info["gz_size"] == image.gz.stat().st_size
    print(
        f"raw allocated {info['raw_allocated'] / 1e6:.0f} MB, gz {info['gz_size'] / 1e6:.0f} MB",
        file=sys.stderr,
    )


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_from_disk_to_a_login_prompt(image: DiskImage, firmware: str, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.raw), "-F", "raw", str(disk)],
        check=True,
        timeout=30,
    )
    log = tmp_path / "serial.log"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "1024", "-smp", "1",
        "-nographic", "-monitor", "none", "-nic", "none",
        "-chardev", f"file,id=s0,path={log}", "-serial", "chardev:s0",
        "-drive", f"file={disk},if=virtio,format=qcow2",
    ]  # fmt: skip
    if firmware == "uefi":
        vars_file = tmp_path / "vars.fd"
        shutil.copyfile(OVMF_VARS, vars_file)
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
        ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    text = ""
    try:
        while time.monotonic() - started < BOOT_WAIT and proc.poll() is None:
            time.sleep(1)
            text = log.read_text(errors="replace") if log.exists() else ""
            if re.search(r"^\S+ login: ", text, re.M):
                break
        elapsed = time.monotonic() - started
    finally:
        stop(proc, timeout=5)
    tail = text[-3000:]
    assert "Loading Linux" in text, tail
    assert "Debian GNU/Linux 12" in text and re.search(r"^\S+ login: ", text, re.M), tail
    print(f"{firmware}: QEMU start to login prompt {elapsed:.1f} s", file=sys.stderr)
