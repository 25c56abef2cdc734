"""A machine may boot from any NIC: the shipped scripts name the NIC that booted.

iPXE's ``${netX}`` is the network device it opened last, the one the entry script
came through; ``${net0}`` is merely the first, which on a machine whose first NIC is
not cabled never booted anything. The kernel line passes the booted NIC on as
``BOOTIF=01-aa-bb-..`` (pxelinux's form), which the guest ramdisk's init reads to run
DHCP there first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provisiond.deploy import boot_scripts as boot
from provisiond.templates import DEFAULT_DIR, Templates

TEMPLATES = Templates(DEFAULT_DIR)
BASE = "http://10.0.0.1:8080"
INIT = Path(boot.__file__).parents[1] / "rack" / "guest" / "init"
BOOTIF = "BOOTIF=01-${netX/mac:hexhyp}"


def context(arch: str = "x86_64") -> dict[str, Any]:
    image = {
        "name": "img",
        "kernel_url": f"{BASE}/images/img/vmlinuz",
        "initrd_url": f"{BASE}/images/img/initrd.img",
        "initrd_name": "initrd.img",
        "kernel_args": "console=ttyS0",
    }
    machine = {"name": "m1", "uuid": "U", "arch": arch, "state": "inspecting", "mac": "x"}
    return {"base_url": BASE, "machine": machine, "image": image, "seed_url": f"{BASE}/meta/U/"}


def test_the_entry_script_asks_for_the_nic_that_booted() -> None:
    text = boot.entry_script(TEMPLATES, BASE)
    assert f"chain {BASE}/boot/${{netX/mac}}.ipxe || goto failed" in text.splitlines()
    code = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert not any("net0" in ln for ln in code), code


def test_no_shipped_ipxe_script_names_net0() -> None:
    for path in sorted((DEFAULT_DIR / "ipxe").glob("*.j2")):
        code = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
        assert not any(re.search(r"\$\{net[0-9]", ln) for ln in code), path


@pytest.mark.parametrize(
    ("kind", "arch"), [("inspect", "x86_64"), ("deploy", "x86_64"), ("deploy", "aarch64")]
)
def test_inspect_and_deploy_kernel_lines_carry_bootif(kind: str, arch: str) -> None:
    text = boot.render_script(TEMPLATES, kind, arch, **context(arch))
    [kernel] = [ln for ln in text.splitlines() if ln.startswith("kernel ")]
    assert kernel.endswith(f" {BOOTIF} || goto failed"), kernel
    assert kernel.count("BOOTIF=") == 1


def test_retry_asks_again_for_the_mac_it_was_asked_for() -> None:
    # The retry script answers /boot/<mac>.ipxe, where <mac> already is ${netX/mac}.
    ctx = context()
    ctx["machine"]["mac"] = "52:54:00:00:0a:02"
    text = boot.render_script(TEMPLATES, "retry", "x86_64", reason="busy", retry_s=60, **ctx)
    assert f"chain {BASE}/boot/52:54:00:00:0a:02.ipxe || exit" in text


def _bootif_mac(tmp_path: Path, cmdline: str) -> str:
    """Run the init's own ``bootif_mac`` function with busybox sh on ``cmdline``."""
    source = INIT.read_text()
    match = re.search(r"^bootif_mac\(\) \{\n.*?^\}\n", source, re.S | re.M)
    assert match, "init has no bootif_mac function"
    fake = tmp_path / "cmdline"
    fake.write_text(cmdline + "\n")
    script = match.group(0).replace("/proc/cmdline", str(fake)) + "bootif_mac\n"
    busybox = shutil.which("busybox")
    assert busybox is not None
    done = subprocess.run(
        [busybox, "sh", "-c", script], capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox (the ramdisk's shell)")
@pytest.mark.parametrize(
    ("cmdline", "mac"),
    [
        ("console=ttyS0 BOOTIF=01-52-54-00-AB-cd-02 quiet", "52:54:00:ab:cd:02"),
        ("ds=nocloud-net;s=http://h/meta/u/ BOOTIF=01-52-54-00-00-0a-02", "52:54:00:00:0a:02"),
        ("BOOTIF=52:54:00:00:0a:02", "52:54:00:00:0a:02"),  # bare MAC: taken as well
        ("BOOTIF=01-52-54-00-00-0a console=ttyS0", ""),  # five octets: ignored
        ("BOOTIF=01-${netX/mac:hexhyp}", ""),  # not expanded (no iPXE): ignored
        ("console=ttyS0 quiet", ""),  # no BOOTIF: today's order
    ],
)
def test_the_ramdisk_reads_bootif(tmp_path: Path, cmdline: str, mac: str) -> None:
    assert _bootif_mac(tmp_path, cmdline) == mac
