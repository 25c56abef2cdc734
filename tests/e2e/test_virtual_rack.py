"""Instance ready, end to end, on a QEMU virtual rack (TCG) behind simulated IPMI BMCs.

Real parts only: the guest image built from Debian packages, QEMU guests with a real
iPXE ROM on a bridge inside a namespace this test creates, the daemon's supervised
dnsmasq there, ``provisiond serve`` as a process, the BMC farm over IPMI, the agent
installed over SSH. One rack of two guests serves every test in this module, in
order: discovery, inspection, concurrent deploy, SSH with the allocation's key,
release with the wipe checked on the disk images, then the failure paths.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisiond.rack.scenario import DEPLOY_IMAGE, Scenario
from tests.support import browser, e2e

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and taps need root"),
    pytest.mark.timeout(600),
]

CONFIG = """\
reaper_interval_s = 2
[timeouts]
inspecting = 240
deploying = 75
installing_agent = 120
releasing = 120
"""


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("vrack")
    lines: list[str] = []
    sc = Scenario(
        f"e2e{os.getpid() % 10000}",
        2,
        workdir,
        subnet="10.214.0.0/24",
        ipv6_prefix="fd00:214::/64",
        extra_config=CONFIG,
        log=lines.append,
        uefi=1,  # vm2 boots OVMF: iPXE's EFI build, the kernel's EFI stub
    )
    with e2e.brought_up(sc):
        yield sc


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    return e2e.keypair()


def test_discover_and_inspect(rack: Scenario) -> None:
    assert rack.rack is not None
    found = rack.discover()
    assert found["responders"] == 2 and not found["failed"], found
    assert sorted(found["updated"] + found["unchanged"]) == ["vm1", "vm2"]
    try:
        machines = rack.inspect_all(timeout=240)
    except Exception as exc:
        pytest.fail(f"{exc}\n{e2e.diagnose(rack)}")
    for guest in rack.rack.guests:
        m = machines[guest.name]
        # The agent's inventory matches the QEMU command line of the guest.
        assert m["cpus"] == guest.cpus
        assert guest.ram_mib * 0.7 < m["ram_mib"] <= guest.ram_mib
        disks = {d["name"]: d["size_bytes"] for d in m["disks"]}
        assert disks == {"vda": guest.disk_mib * 2**20}
        assert [n["mac"] for n in m["nics"]] == [guest.mac]
        # ... and how it was booted: vm2 went through OVMF and iPXE's EFI build.
        with rack.api() as api:
            params = {"machine": guest.name, "event": "inventory_reported", "limit": 1}
            [reported] = api.get("/events", params=params).json()
        assert (
            reported["details"]["firmware"]
            == guest.firmware
            == ("uefi" if guest.index == 2 else "bios")
        )
        record = rack.deployments(guest.name)[0]
        assert record["kind"] == "inspect" and record["outcome"] == "available"
        phases = [p["phase"] for p in record["phases"]]
        for phase in ("power_cycle", "ipxe_dhcp", "ipxe_script", "kernel", "initrd",
                      "seed", "os_callback", "inventory"):  # fmt: skip
            assert phase in phases, (phase, phases)
        e2e.wait_unlocked(rack, guest.name)
    # Each guest is cabled as planned: its agent heard the rack switch's LLDP on the
    # planned port (vm2's UEFI ramdisk and vm1's BIOS one alike).
    with rack.api() as api:
        cabling = api.get("/cabling").json()
    verdicts = {p["machine"]: p for p in cabling["ports"] if p["expected_port"]}
    for guest in rack.rack.guests:
        port = verdicts[guest.name]
        assert port["result"] == "pass", port
        assert port["seen_port_id"] == port["expected_port"] == f"swp{guest.index}", port
        assert not rack.machine(guest.name)["hold_reason"]
    assert cabling["counts"].get("fail", 0) == 0, cabling


def test_deploy_concurrently_ssh_and_release(rack: Scenario, keypair: tuple[str, str]) -> None:
    assert rack.rack is not None
    pem, pub = keypair
    # What a CI job runs: `provisiond allocate ... --wait --json`, two at once.
    allocations = e2e.allocate_with_cli(rack, ["vm1", "vm2"], DEPLOY_IMAGE, pub, timeout=300)
    assert [a["state"] for a in allocations] == ["ready", "ready"], e2e.diagnose(rack)
    for a in allocations:
        assert {"id", "state", "address", "ssh_user", "host_key_fingerprint"} <= set(a)
    for alloc, guest in zip(allocations, rack.rack.guests, strict=True):
        assert alloc["address"] == guest.ip and alloc["host_key_fingerprint"].startswith("SHA256:")
        # The allocation's own key works, and the host key the daemon pinned is the
        # one the machine really has (RejectPolicy with only that key known).
        out = e2e.ssh(
            rack, alloc["address"], pem, alloc["host_key"], "hostname; cat /sys/block/vda/size"
        )
        assert out.split() == [guest.name, str(guest.disk_mib * 2048)]
        record = rack.deployments(guest.name)[0]
        phases = {p["phase"]: p["seconds"] for p in record["phases"]}
        assert record["outcome"] == "active"
        assert 0 < phases["os_callback"] < phases["agent_heartbeat"] < 120
    for guest in rack.rack.guests:
        assert rack.machine(guest.name)["state"] == "active"
    shown = rack.cli("machines", "show", "vm1")  # the operator's view of the last deploy
    for text in ("active", "deploy", "power_cycle", "os_callback", "agent_heartbeat"):
        assert text in shown, shown
    with rack.api() as api:
        for alloc in allocations:
            assert api.delete(f"/allocations/{alloc['id']}").status_code == 200
    rack.wait_states(["vm1", "vm2"], {"available"}, timeout=180, fail={"release_failed"})
    for guest in rack.rack.guests:
        data = Path(guest.disk).read_bytes()
        assert data[: 2**20] == bytes(2**20), f"{guest.name}: first MiB not wiped"
        assert data[-(2**20) :] == bytes(2**20), f"{guest.name}: last MiB not wiped"
        e2e.wait_unlocked(rack, guest.name)


def test_bmc_that_refuses_power_fails_the_deploy(rack: Scenario, keypair: tuple[str, str]) -> None:
    _, pub = keypair
    with rack.api() as api:
        r = api.patch("/machines/vm2", json={"bmc": {"password": "not-the-bmc-password"}})
        assert r.status_code == 200, r.text
    try:
        mark = e2e.last_event(rack, "vm2")
        rack.allocate(["vm2"], [pub])
        failed = e2e.wait_event(rack, "vm2", "fail", after=mark, timeout=120)
        assert "BMC power-cycle failed" in failed["message"], failed
        e2e.wait_unlocked(rack, "vm2")
    finally:
        with rack.api() as api:
            for a in api.get("/allocations", params={"state": "pending,deploying,ready"}).json():
                api.delete(f"/allocations/{a['id']}")
            r = api.patch("/machines/vm2", json={"bmc": {"password": rack.bmc_password}})
            assert r.status_code == 200, r.text
            # The release after the failed deploy could not power off either; retry it.
            rack.wait_states(["vm2"], {"available", "release_failed"}, timeout=120)
            if rack.machine("vm2")["state"] == "release_failed":
                r = api.post("/machines/vm2/events", json={"event": "release"})
                assert r.status_code == 200, r.text
        rack.wait_states(["vm2"], {"available"}, timeout=120, fail={"release_failed"})


def test_os_that_never_calls_back_hits_the_deadline(
    rack: Scenario, keypair: tuple[str, str], tmp_path: Path
) -> None:
    # A kernel with an initrd that is not one: it panics and never phones home.
    assert rack.image is not None
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an initramfs" * 1024)
    rack.cli("images", "add", "broken", "--kernel", str(rack.image.kernel), "--initrd", str(junk),
             "--kernel-args", "console=ttyS0 panic=-1")  # fmt: skip
    _, pub = keypair
    mark = e2e.last_event(rack, "vm1")
    with browser.browser() as chromium:
        page = chromium.new_context(viewport={"width": 1400, "height": 900}).new_page()
        browser.sign_in(page, rack.url, rack.token)
        page.goto(rack.url + "/ui/machines/vm1")
        page.wait_for_function("() => document.getElementById('live-dot').classList.contains('on')")
        with rack.api() as api:
            r = api.post("/allocations", json={"constraints": {"names": ["vm1"]},
                                               "image": "broken", "ssh_keys": [pub],
                                               "lease": "10m"})  # fmt: skip
            assert r.status_code in (200, 201), r.text
            alloc_id = r.json()["id"]
        # The machine page, never reloaded, fills its timeline phase by phase from the
        # live stream, then shows the failure and its reason.
        seen = e2e.watch_timeline(page, timeout=150)
        # (iPXE fetches its script, kernel and initrd within a second or two: those
        # phases may land in one refresh, after the power-cycle's)
        running = [phases for outcome, phases in seen if outcome == "running"]
        assert len({len(p) for p in running}) >= 2, seen
        assert all(a == b[: len(a)] for a, b in itertools.pairwise(running)), seen
        assert {"power_cycle", "kernel"} <= set(running[-1]), seen
        assert seen[-1][0].endswith("failed"), seen
        assert "no OS callback" in (page.text_content("svg.timeline .failure") or "")
        browser.shot(page, "machine-deploy-failed")
        page.goto(rack.url + "/ui/")
        reason = page.inner_text('#failed tr[data-machine="vm1"] .reason')
        assert "no OS callback within 75s" in reason, reason
        browser.shot(page, "overview-failed")
    failed = e2e.wait_event(rack, "vm1", "fail", after=mark, timeout=150)
    # The reason names what never came and the last phase that did (the kernel booted
    # from our HTTP server, then nothing).
    assert "deploying: no OS callback within 75s" in failed["message"], failed
    assert failed["details"]["last_phase"] in ("initrd", "kernel", "os_dhcp"), failed
    with rack.api() as api:
        api.delete(f"/allocations/{alloc_id}")
    rack.wait_states(["vm1"], {"available", "deploy_failed"}, timeout=120)


def test_daemon_killed_while_installing_agent_resumes(
    rack: Scenario, keypair: tuple[str, str]
) -> None:
    pem, pub = keypair
    with rack.api() as api:
        for a in api.get("/allocations", params={"state": "pending,deploying,ready"}).json():
            api.delete(f"/allocations/{a['id']}")
    rack.wait_states(["vm1", "vm2"], {"available"}, timeout=180, fail={"release_failed"})
    # The operator's way: `machines deploy` (an allocation pinned to the machine).
    out = rack.cli(
        "machines",
        "deploy",
        "vm1",
        "--image",
        DEPLOY_IMAGE,
        "--ssh-key",
        pub,
        "--no-wait",
        "--json",
    )
    alloc_id = json.loads(out)["id"]
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        state = rack.machine("vm1")["state"]
        if state in ("installing_agent", "active", "deploy_failed"):
            break
        time.sleep(0.05)
    assert state == "installing_agent", f"never saw installing_agent (last {state})"
    rack.kill_daemon(signal.SIGKILL)
    rack.start_daemon()
    [alloc] = rack.wait_allocations([alloc_id], timeout=180)
    assert alloc["state"] == "ready", alloc
    assert rack.machine("vm1")["state"] == "active"
    assert e2e.ssh(rack, alloc["address"], pem, alloc["host_key"], "echo ok").strip() == "ok"


def test_a_host_key_that_does_not_match_fails_the_deploy(
    rack: Scenario, keypair: tuple[str, str]
) -> None:
    # The guest phones home with a key its sshd does not use, as an impostor on the
    # machine's address would: the daemon must not trust the SSH server it finds.
    assert rack.image is not None
    args = f"{rack.image.kernel_args} provisiond.fault=impostor-host-key"
    image = ["--kernel", str(rack.image.kernel), "--initrd", str(rack.image.initrd)]
    rack.cli("images", "add", "impostor", *image, "--kernel-args", args)
    _, pub = keypair
    mark = e2e.last_event(rack, "vm2")
    with rack.api() as api:
        r = api.post("/allocations", json={"constraints": {"names": ["vm2"]}, "image": "impostor",
                                           "ssh_keys": [pub], "lease": "10m"})  # fmt: skip
        assert r.status_code in (200, 201), r.text
    failed = e2e.wait_event(rack, "vm2", "fail", after=mark, timeout=180)
    assert "SSH host key mismatch" in failed["message"], failed
    e2e.wait_unlocked(rack, "vm2")
    record = next(d for d in rack.deployments("vm2") if d["outcome"] == "failed")
    assert "os_callback" in [p["phase"] for p in record["phases"]]
    assert "agent_installed" not in [p["phase"] for p in record["phases"]]


def test_an_unknown_machine_that_pxe_boots_is_enrolled_and_inspected(rack: Scenario) -> None:
    # Forget vm2 entirely, then network-boot it through its BMC behind the daemon's
    # back: the daemon has never seen its MAC, so it enrolls it ("discovered via PXE")
    # and, with auto_enroll on, boots it into inspection.
    assert rack.rack is not None
    guest = rack.rack.guests[1]
    rack.wait_states(["vm2"], {"available", "release_failed", "deploy_failed"}, timeout=180)
    e2e.wait_unlocked(rack, "vm2")
    with rack.api() as api:
        assert api.post("/machines/vm2/events", json={"event": "retire"}).status_code == 200
        assert api.delete("/machines/vm2").status_code == 204
    ipmi = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(guest.bmc_port),
            "-U", rack.rack.bmc_username, "-P", rack.bmc_password]  # fmt: skip
    for command in (["chassis", "bootdev", "pxe"], ["chassis", "power", "off"],
                    ["chassis", "power", "on"]):  # fmt: skip
        done = subprocess.run([*ipmi, *command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    name = "pxe-" + guest.mac.replace(":", "")
    machine = rack.wait_states([name], {"available"}, timeout=240, fail={"inspect_failed"})[name]
    assert [n["mac"] for n in machine["nics"]] == [guest.mac]
    assert machine["cpus"] == guest.cpus
    assert machine["disks"][0]["size_bytes"] == guest.disk_mib * 2**20
    assert machine["nics"][0]["ip_address"].startswith("10.214.0.")  # learnt from dnsmasq's ACK
    with rack.api() as api:
        events = api.get("/events", params={"machine": name, "order": "asc"}).json()
    assert events[0]["event"] == "enroll" and events[0]["message"] == "discovered via PXE"
    assert any(e["event"] == "inspect" for e in events)
