"""Real instances on disk, end to end: a Debian 12 image written to each guest's own disk.

Real parts only: the Debian 12 GPT disk image built from Debian packages (GRUB for
BIOS and UEFI, cloud-init), registered with ``images add --disk``; QEMU guests under
SeaBIOS and OVMF behind simulated IPMI BMCs; the deploy ramdisk running the image
writer over SSH; cloud-init on the written disk fetching this deploy's NoCloud seed
and phoning home; the agent installed on the disk OS. One rack of two guests (vm1
BIOS, vm2 UEFI) serves the module, in order: inspect, deploy both at once with
``provisiond allocate --wait --json``, SSH in with the allocation's key, power-cycle
through the BMC and come back ``active`` with nothing redeployed, release with the
wipe checked on the disk files; then the failure paths.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisiond.rack.scenario import Scenario
from tests.support import e2e

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and taps need root"),
    pytest.mark.timeout(1200),
]

IMAGE = "debian-12"
CONFIG = """\
reaper_interval_s = 2
[timeouts]
inspecting = 240
deploying = 600
installing_agent = 180
releasing = 180
"""
USER_DATA = """\
#cloud-config
write_files:
  - path: /var/lib/provisiond-e2e/marker
    content: "written by cloud-init from the allocation's user-data\\n"
"""
MARKER = "/var/lib/provisiond-e2e/marker"
DISK_MIB = 3072  # the image is 2 GiB: room for the hints and the too-small case


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("diskrack")
    sc = Scenario(
        f"dsk{os.getpid() % 10000}",
        2,
        workdir,
        subnet="10.215.0.0/24",
        ipv6_prefix="fd00:215::/64",
        extra_config=CONFIG,
        log=lambda _line: None,
        uefi=1,
        ram_mib=1024,  # Debian with cloud-init under TCG (DESIGN.md)
        disk_mib=DISK_MIB,
        disk_image=IMAGE,
    )
    with e2e.brought_up(sc):
        yield sc


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    return e2e.keypair()


@pytest.fixture(autouse=True)
def _left_available(rack: Scenario) -> Iterator[None]:
    """Each test starts from machines a failed test before it did not leave allocated:
    whatever allocation is still open afterwards is released and the rack waited for."""
    yield
    assert rack.rack is not None
    with rack.api() as api:
        left = [a for a in api.get("/allocations", params={"limit": 1000}).json()
                if a["state"] in ("pending", "deploying", "ready", "failed")]  # fmt: skip
        for alloc in left:
            api.delete(f"/allocations/{alloc['id']}")
    if left:
        names = [g.name for g in rack.rack.guests]
        rack.wait_states(names, {"available"}, timeout=300, fail={"release_failed"})


def _ipmi(sc: Scenario, index: int, *command: str) -> None:
    assert sc.rack is not None
    guest = sc.rack.guests[index]
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(guest.bmc_port),
            "-U", sc.rack.bmc_username, "-P", sc.bmc_password, *command]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def _phases(sc: Scenario, name: str) -> dict[str, Any]:
    record = sc.deployments(name)[0]
    return {p["phase"]: p for p in record["phases"]}


def test_inspect(rack: Scenario) -> None:
    found = rack.discover()
    assert found["responders"] == 2 and not found["failed"], found
    try:
        machines = rack.inspect_all(timeout=300)
    except Exception as exc:
        pytest.fail(f"{exc}\n{e2e.diagnose(rack)}")
    assert {m["firmware"] for m in machines.values()} == {"bios", "uefi"}


def test_deploy_to_disk_reboot_and_release(
    rack: Scenario, keypair: tuple[str, str], tmp_path: Path
) -> None:
    assert rack.rack is not None
    pem, pub = keypair
    user_data = tmp_path / "user-data"
    user_data.write_text(USER_DATA)
    allocations = e2e.allocate_with_cli(
        rack, ["vm1", "vm2"], IMAGE, pub, "--user-data", str(user_data), timeout=900
    )
    assert [a["state"] for a in allocations] == ["ready", "ready"], e2e.diagnose(rack)
    for alloc, guest in zip(allocations, rack.rack.guests, strict=True):
        run = lambda cmd, a=alloc: e2e.ssh(rack, a["address"], pem, a["host_key"], cmd)  # noqa: E731
        release = run(". /etc/os-release; echo $ID $VERSION_ID")
        assert release.split() == ["debian", "12"], release
        # / is the written disk's third partition, not a ramdisk.
        assert run("findmnt -no SOURCE /").strip() == "/dev/vda3"
        assert "status: done" in run("cloud-init status --wait"), run("cloud-init status --long")
        assert "allocation's user-data" in run(f"cat {MARKER}")
        assert run("test -d /sys/firmware/efi && echo uefi || echo bios").strip() == guest.firmware
        phases = _phases(rack, guest.name)
        for phase in ("ramdisk_callback", "disk_selected", "image_download", "image_written",
                      "disk_configured", "disk_boot", "os_seed", "os_callback",
                      "agent_heartbeat"):  # fmt: skip
            assert phase in phases, (phase, sorted(phases))
        written = rack.deployments(guest.name)[0]["image_write"]
        assert written["bytes"] == 2 * 2**30 and written["mb_s"] > 0, written

    # A power cycle through the BMC: the disk boots again (persistent boot device),
    # the agent heartbeats again, nothing is redeployed.
    deployments = len(rack.deployments("vm1"))
    cycled = time.time()
    _ipmi(rack, 0, "chassis", "power", "cycle")
    deadline = time.monotonic() + 300
    beat = None
    while time.monotonic() < deadline:
        machine = rack.machine("vm1")
        assert machine["state"] == "active", machine
        beat = machine["last_heartbeat_at"]
        if beat and _epoch(beat) > cycled + 5:
            break
        time.sleep(2)
    assert beat and _epoch(beat) > cycled + 5, f"no heartbeat after the cycle\n{e2e.diagnose(rack)}"
    alloc = allocations[0]
    uptime = e2e.ssh(rack, alloc["address"], pem, alloc["host_key"], "cut -d' ' -f1 /proc/uptime")
    assert float(uptime) < time.time() - cycled
    assert "allocation's user-data" in e2e.ssh(
        rack, alloc["address"], pem, alloc["host_key"], f"cat {MARKER}"
    )
    assert len(rack.deployments("vm1")) == deployments

    with rack.api() as api:
        for a in allocations:
            assert api.delete(f"/allocations/{a['id']}").status_code == 200
    rack.wait_states(["vm1", "vm2"], {"available"}, timeout=300, fail={"release_failed"})
    for guest in rack.rack.guests:
        with open(guest.disk, "rb") as disk:
            head = disk.read(2**20)
            disk.seek(-(2**20), os.SEEK_END)
            tail = disk.read()
        assert head == bytes(2**20), f"{guest.name}: first MiB not wiped"
        assert tail == bytes(2**20), f"{guest.name}: last MiB not wiped"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _allocate(rack: Scenario, name: str, pub: str, **extra: Any) -> str:
    with rack.api() as api:
        body = {"constraints": {"names": [name]}, "image": IMAGE, "ssh_keys": [pub],
                "lease": "30m", **extra}  # fmt: skip
        r = api.post("/allocations", json=body)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])


def _release(rack: Scenario, alloc_id: str, name: str) -> None:
    with rack.api() as api:
        api.delete(f"/allocations/{alloc_id}")
    rack.wait_states([name], {"available"}, timeout=300, fail={"release_failed"})


def test_root_device_hints_that_match_nothing_fail_before_writing(
    rack: Scenario, keypair: tuple[str, str]
) -> None:
    _, pub = keypair
    mark = e2e.last_event(rack, "vm1")
    alloc = _allocate(rack, "vm1", pub, root_device={"serial": "no-such-serial"})
    failed = e2e.wait_event(rack, "vm1", "fail", after=mark, timeout=300)
    assert "no_disk" in failed["message"] and "no-such-serial" in failed["message"], failed
    assert "image_download" not in _phases(rack, "vm1")
    e2e.wait_unlocked(rack, "vm1")
    _release(rack, alloc, "vm1")


def test_a_corrupted_image_fails_with_both_checksums_and_nothing_bootable(
    rack: Scenario, keypair: tuple[str, str]
) -> None:
    """The served file is not the one the catalog recorded (recompressed, so it still
    decodes): the writer writes it all, finds the sha256 wrong, and wipes the disk."""
    assert rack.rack is not None
    _, pub = keypair
    stored = rack.data_dir / "images" / IMAGE / "disk.raw.gz"
    saved = stored.with_name("disk.raw.gz.saved")
    os.replace(stored, saved)
    try:
        with stored.open("wb") as out:
            decode = subprocess.Popen(["gzip", "-dc", str(saved)], stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-1"], stdin=decode.stdout, stdout=out, check=True, timeout=300)
            assert decode.wait(timeout=60) == 0
        mark = e2e.last_event(rack, "vm1")
        alloc = _allocate(rack, "vm1", pub)
        failed = e2e.wait_event(rack, "vm1", "fail", after=mark, timeout=400)
    finally:
        os.replace(saved, stored)
    assert "checksum_mismatch" in failed["message"], failed
    with rack.api() as api:
        expected = api.get(f"/images/{IMAGE}").json()["sha256"]["disk"]
    assert f"expected {expected}" in failed["message"], failed
    e2e.wait_unlocked(rack, "vm1")
    with open(rack.rack.guests[0].disk, "rb") as disk:
        head = disk.read(2**20)
        disk.seek(2 * 2**30 - 2**20)  # where the image's backup GPT was
        image_tail = disk.read(2**20)
    assert head == bytes(2**20) and image_tail == bytes(2**20), "a GPT survived the failed write"
    _release(rack, alloc, "vm1")
