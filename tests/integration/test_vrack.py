"""The virtual rack for real: netns, bridge, taps, QEMU (TCG) with iPXE, BMCs driven by ipmitool.

One rack of two guests serves most tests (module fixture); the crash tests build a
one-guest rack of their own. There is no DHCP server: a guest PXE-booted through its
BMC shows iPXE on its serial log and then fails to configure, which is all we need.
Every rack is torn down by ``down`` in a finalizer, even when a test fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlmodel import select
from typer.testing import CliRunner

from provisiond.cli import app
from provisiond.config import load_settings
from provisiond.db import Database
from provisiond.drivers.pdu.apc_snmp import ApcSnmpPdu
from provisiond.drivers.pdu.base import PduTarget
from provisiond.drivers.pdu.snmp import SnmpClient
from provisiond.errors import Conflict
from provisiond.inventory.plan import Source, apply
from provisiond.models import Machine, Pdu, Rack, Switch
from provisiond.networks import ProvisioningNetwork
from provisiond.pdus.access import pdu_target
from provisiond.rack import vrack
from provisiond.rack.qemu import pid_alive, pid_command
from provisiond.rack.vrack_files import switch_chassis_mac
from provisiond.secrets import SecretBox
from tests.support.netns import require

pytestmark = pytest.mark.slow  # QEMU guests: not in `make test-fast`

PASSWORD = "rack-secret"  # the simulated BMCs' password
COMMUNITY = "rack-pdu-community"  # the rack PDU's SNMP community
BOOT_S = 30


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vrack.RackState]:
    require("ip", "qemu-system-x86_64", "ipmitool")
    name = f"t{secrets.token_hex(3)}"
    state_dir = tmp_path_factory.mktemp("vrack") / name
    try:
        yield vrack.up(
            2, name=name, state_dir=state_dir, password=PASSWORD, disk_mib=8,
            pdu_community=COMMUNITY,
        )  # fmt: skip
    finally:
        vrack.down(name, state_dir)
    assert not Path("/run/netns", f"pvd-{name}").exists()


def ipmi(port: int, *args: str, check: bool = True) -> str:
    cmd = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port),
           "-U", "admin", "-P", PASSWORD, "-C", "3", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0 or not check, proc.stderr
    return proc.stdout.strip() if proc.returncode == 0 else ""


def ns(rack: vrack.RackState, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", rack.netns, *cmd],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip


def qemu_pid(guest: vrack.GuestState) -> int:
    pid = int(Path(guest.pidfile).read_text())
    assert pid_alive(pid) and "qemu-system-x86_64" in pid_command(pid)
    return pid


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_network_namespace_bridge_and_taps(rack: vrack.RackState) -> None:
    addrs = ns(rack, "ip", "-o", "addr", "show", "dev", "br0")
    assert "inet 10.213.0.1/24" in addrs and "inet6 fd00:213::1/64" in addrs
    assert "tentative" not in addrs
    assert ns(rack, "cat", "/proc/sys/net/ipv6/conf/br0/accept_dad").strip() == "0"
    on_bridge = ns(rack, "ip", "-o", "link", "show", "master", "br0")
    assert "tap1:" in on_bridge and "tap2:" in on_bridge
    assert "lo: <LOOPBACK,UP" in ns(rack, "ip", "-o", "link", "show", "lo")


def test_guests_disks_and_state_file(rack: vrack.RackState) -> None:
    assert [(g.name, g.ip, g.tap) for g in rack.guests] == [
        ("vm1", "10.213.0.11", "tap1"), ("vm2", "10.213.0.12", "tap2")]  # fmt: skip
    assert len({g.mac for g in rack.guests}) == 2
    assert rack.guests[1].bmc_port == rack.guests[0].bmc_port + 1
    disk = Path(rack.guests[0].disk).read_bytes()
    mib = 1 << 20
    assert len(disk) == 8 * mib
    assert disk[:mib] == vrack.FILL and disk[-mib:] == vrack.FILL
    assert disk[mib:-mib] == bytes(6 * mib)
    assert vrack.load(rack.name, Path(rack.state_dir)) == rack  # rack.json round-trips
    assert all(g.power == "off" for g in vrack.status(rack.name, Path(rack.state_dir)).guests)


def test_pxe_boot_power_cycle_and_off_through_the_bmc(
    rack: vrack.RackState, tmp_path: Path
) -> None:
    guest = rack.guests[0]
    port = guest.bmc_port
    assert ipmi(port, "power", "status") == "Chassis Power is off"
    ipmi(port, "chassis", "bootdev", "pxe")
    ipmi(port, "power", "on")
    pid = qemu_pid(guest)
    try:
        cmdline = pid_command(pid)
        assert "-boot n" in cmdline and f"mac={guest.mac}" in cmdline
        assert "-accel tcg" in cmdline
        # QEMU runs in the rack's namespace (ip netns exec execs it: same PID).
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{rack.netns}").st_ino
        serial = Path(guest.serial_log)
        deadline = time.monotonic() + BOOT_S
        while time.monotonic() < deadline and f"net0: {guest.mac}" not in _text(serial):
            time.sleep(0.5)
        assert "iPXE" in _text(serial) and f"net0: {guest.mac}" in _text(serial), _text(serial)
        assert ipmi(port, "power", "status") == "Chassis Power is on"
        state = vrack.status(rack.name, Path(rack.state_dir))
        assert [(g.name, g.power, g.pid) for g in state.guests] == [
            ("vm1", "on", pid), ("vm2", "off", None)]  # fmt: skip
        assert state.farm_running and state.guests[0].last_serial_line
        # A down with the wrong folder must not pull the namespace from under a live guest.
        with pytest.raises(Conflict, match="in use"):
            vrack.down(rack.name, tmp_path / "elsewhere")
        assert Path("/run/netns", rack.netns).exists() and pid_alive(pid)

        ipmi(port, "chassis", "bootdev", "disk")
        ipmi(port, "power", "cycle")
        assert wait_gone(pid)
        pid = qemu_pid(guest)
        assert "-boot c" in pid_command(pid)
    finally:
        ipmi(port, "power", "off")
    assert wait_gone(pid)
    assert not Path(guest.pidfile).exists()
    assert ipmi(port, "power", "status") == "Chassis Power is off"


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_inventory_applies_to_a_fresh_database(
    rack: vrack.RackState, sqlite_db: Database, tmp_path: Path
) -> None:
    box = SecretBox.from_key_file(tmp_path / "secret.key")
    text = rack.inventory_file.read_text()
    told: list[tuple[list[str], list[str]]] = []
    source = Source(text, {vrack.PASSWORD_ENV: PASSWORD, vrack.PDU_COMMUNITY_ENV: COMMUNITY})
    with sqlite_db.transaction() as session:
        plan = apply(
            session,
            source,
            secrets=box,
            actor="test",
            hosts_changed=lambda names, removed=(): told.append((list(names), list(removed))),
        )
        assert told == []  # only once the transaction commits
    assert plan.summary["create"] == 5, plan  # the rack, its switch, its PDU, two machines
    assert told == [(["vm1", "vm2"], [])]
    with sqlite_db.read_session() as session:
        machines = {m.name: m for m in session.exec(select(Machine))}
        vm2 = machines["vm2"]
        assert vm2.u_position == 2 and vm2.arch == "x86_64"
        assert [(n.mac, n.ip_address, n.pxe) for n in vm2.nics] == [
            (rack.guests[1].mac, "10.213.0.12", True)]  # fmt: skip
        assert vm2.bmc is not None
        assert (vm2.bmc.driver, vm2.bmc.address, vm2.bmc.port) == (
            "ipmi", "127.0.0.1", rack.guests[1].bmc_port)  # fmt: skip
        assert vm2.bmc.secret_encrypted is not None
        assert box.decrypt(vm2.bmc.secret_encrypted) == PASSWORD
        switch = session.exec(select(Switch)).one()
        assert (switch.name, switch.chassis_mac) == (
            f"{rack.name}-sw1", switch_chassis_mac(rack.name))  # fmt: skip
        pdu = session.exec(select(Pdu)).one()
        assert (pdu.name, pdu.driver, pdu.mgmt_address, pdu.snmp_port, pdu.snmp_version) == (
            f"{rack.name}-pdu1", "apc_snmp", "127.0.0.1", rack.pdu_port, "2c")  # fmt: skip
        assert pdu.secret_encrypted and COMMUNITY not in pdu.secret_encrypted
        assert pdu_target(pdu, box, timeout=1).community == COMMUNITY  # encrypted, not plain
        plugged = {o.number: o.machine_id for o in pdu.outlets}
        assert plugged == {1: machines["vm1"].id, 2: vm2.id}
        assert session.exec(select(Rack)).one().power_budget_watts == 2000
    with sqlite_db.transaction() as session:  # the same file again changes nothing
        again = apply(
            session, source, secrets=box, actor="test", hosts_changed=lambda *a, **k: None
        )
    assert again.summary["unchanged"] == 5, again


def test_the_farm_pdu_answers_snmp_and_cuts_the_right_bmc(rack: vrack.RackState) -> None:
    """Outlet K of the rack's PDU feeds guest K's BMC: off, the BMC goes silent (the
    guest stays off: nothing boots)."""
    target = PduTarget(f"{rack.name}-pdu1", "127.0.0.1", rack.pdu_port, community=COMMUNITY,
                       timeout=1.0, retries=1)  # fmt: skip

    async def switch(outlet: int, on: bool) -> bool:
        client = await SnmpClient.open()
        try:
            return await ApcSnmpPdu(target, client).set_outlet(outlet, on)
        finally:
            client.close()

    vm1, vm2 = (g.bmc_port for g in rack.guests)
    assert ipmi(vm2, "power", "status") == "Chassis Power is off"
    try:
        assert asyncio.run(switch(2, False)) is True
        assert ipmi(vm2, "-N", "1", "-R", "1", "power", "status", check=False) == ""
        assert ipmi(vm1, "power", "status") == "Chassis Power is off"  # still answers
    finally:
        assert asyncio.run(switch(2, True)) is True
    deadline = time.monotonic() + 10  # its BMC boots again
    while time.monotonic() < deadline and not ipmi(vm2, "power", "status", check=False):
        time.sleep(0.2)
    assert ipmi(vm2, "power", "status") == "Chassis Power is off"
    assert not Path(rack.guests[1].pidfile).exists()  # no QEMU started


def test_pdu_miswire_swaps_the_inventory_outlets_only(rack: vrack.RackState) -> None:
    assert (Path(rack.state_dir) / "pdu.community").read_text().strip() == COMMUNITY
    assert (Path(rack.state_dir) / "pdu.community").stat().st_mode & 0o077 == 0
    doc = yaml.safe_load(rack.inventory_file.read_text())
    assert [m["outlets"] for m in doc["machines"]] == [
        [f"{rack.name}-pdu1/1"], [f"{rack.name}-pdu1/2"]]  # fmt: skip
    assert COMMUNITY not in rack.inventory_file.read_text()
    crossed = dataclasses.replace(rack, pdu_miswire=["vm1", "vm2"])
    doc = yaml.safe_load(vrack.inventory_yaml(crossed))
    assert [m["outlets"] for m in doc["machines"]] == [
        [f"{rack.name}-pdu1/2"], [f"{rack.name}-pdu1/1"]]  # fmt: skip
    assert doc["pdus"][0]["snmp_community_env"] == vrack.PDU_COMMUNITY_ENV


def test_network_toml_is_a_provisioning_network(rack: vrack.RackState, tmp_path: Path) -> None:
    config = tomllib.loads(rack.network_file.read_text())
    net = ProvisioningNetwork(**config["networks"][0])
    # Appended to a daemon config file, it loads as the daemon's one network.
    daemon_toml = tmp_path / "provisiond.toml"
    daemon_toml.write_text('data_dir = "/tmp/x"\n' + rack.network_file.read_text())
    assert load_settings(daemon_toml).networks == [net]
    assert (net.name, net.interface, net.netns) == (rack.name, "br0", rack.netns)
    assert str(net.boot_address) == "10.213.0.1" and net.http_port == 8080
    assert (str(net.range_start), str(net.range_end)) == ("10.213.0.100", "10.213.0.200")
    assert net.dhcp_mode == "full" and net.ipv6_ra and str(net.ipv6_prefix) == "fd00:213::/64"


def test_second_up_is_refused_with_a_hint(rack: vrack.RackState) -> None:
    with pytest.raises(Conflict) as info:
        vrack.up(1, name=rack.name, state_dir=Path(rack.state_dir))
    assert "already up" in info.value.message and "rack down" in info.value.hint


def test_cli_status_json_and_bad_input(rack: vrack.RackState) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["rack", "status", "--name", rack.name, "--state-dir", rack.state_dir, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"farm_running": true' in result.output and rack.guests[1].mac in result.output
    result = runner.invoke(app, ["rack", "up", "2", "--name", "Not_Valid"])
    assert result.exit_code == 1 and "hint:" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["rack", "up", "2", "--uefi", "3", "--name", "uefibad"])
    assert result.exit_code == 1 and "give 0 to 2" in result.output, result.output
    assert not Path("/run/netns/pvd-uefibad").exists()
    result = runner.invoke(app, ["rack", "up", "2", "--pdu-miswire", "vm1,vm3", "--name", "pdubad"])
    assert result.exit_code == 1 and "--pdu-miswire vm1,vm2" in result.output, result.output
    assert "Traceback" not in result.output and not Path("/run/netns/pvd-pdubad").exists()


def test_crashed_rack_is_cleaned_by_up_and_down(tmp_path: Path) -> None:
    require("ip", "qemu-system-x86_64", "ipmitool")
    name = f"t{secrets.token_hex(3)}"
    state_dir = tmp_path / name
    try:
        first = vrack.up(1, name=name, state_dir=state_dir, password=PASSWORD, disk_mib=4)
        ipmi(first.guests[0].bmc_port, "power", "on")
        old_qemu = qemu_pid(first.guests[0])
        assert first.farm_pid is not None
        os.kill(first.farm_pid, signal.SIGKILL)
        assert wait_gone(first.farm_pid)
        assert not vrack.status(name, state_dir).farm_running
        assert pid_alive(old_qemu)  # orphaned, as after a real crash

        # A stale rack (farm dead) is cleaned up by the next up, which then succeeds.
        second = vrack.up(1, name=name, state_dir=state_dir, password=PASSWORD, disk_mib=4)
        assert not pid_alive(old_qemu)
        assert second.farm_pid is not None and second.farm_pid != first.farm_pid
        ipmi(second.guests[0].bmc_port, "power", "on")
        qemu = qemu_pid(second.guests[0])

        # Crash again, and leave a torn state file behind.
        os.kill(second.farm_pid, signal.SIGKILL)
        assert wait_gone(second.farm_pid)
        (state_dir / "rack.json").write_text('{"name": "')
        removed = vrack.down(name, state_dir)
        assert not pid_alive(qemu)
        assert f"network namespace pvd-{name}" in removed
        assert any(line.startswith("QEMU vm1") for line in removed), removed
        assert not Path("/run/netns", f"pvd-{name}").exists()
        assert not state_dir.exists()
        assert vrack.down(name, state_dir) == []  # idempotent
    finally:
        vrack.down(name, state_dir)


def test_two_nic_guests_boot_from_their_cabled_second_nic(tmp_path: Path) -> None:
    """vm1 (SeaBIOS) and vm2 (OVMF) have an uncabled first NIC: iPXE must get to the
    second. There is no DHCP server here, so each stops after DHCP on the cabled NIC;
    what counts is which NICs iPXE opened, in which order."""
    require("ip", "qemu-system-x86_64", "ipmitool")
    name = f"t{secrets.token_hex(3)}"
    state_dir = tmp_path / name
    try:
        rack = vrack.up(2, name=name, state_dir=state_dir, password=PASSWORD, disk_mib=4,
                        uefi=1, two_nics=2)  # fmt: skip
        bios, uefi = rack.guests
        assert bios.unwired_mac and uefi.unwired_mac and bios.unwired_mac != bios.mac
        assert len({bios.mac, bios.unwired_mac, uefi.mac, uefi.unwired_mac}) == 4
        # Planned as ops would: both NICs, the cabled one (eth1) is the PXE NIC.
        assert bios.nics() == [
            {"mac": bios.unwired_mac, "name": "eth0", "pxe": False},
            {"mac": bios.mac, "name": "eth1", "ip_address": bios.ip, "pxe": True},
        ]
        # The cabled NIC on the rack switch's port for vm1 (lldp_switch announces it).
        assert yaml.safe_load(rack.inventory_file.read_text())["machines"][0]["nics"] == (
            bios.nics(f"{name}-sw1")
        )
        assert bios.nics(f"{name}-sw1")[1]["switch_port"] == f"{name}-sw1/swp1"
        started = time.monotonic()
        for guest in rack.guests:
            ipmi(guest.bmc_port, "chassis", "bootdev", "pxe")
            ipmi(guest.bmc_port, "power", "on")
        cmd = pid_command(qemu_pid(bios))
        assert "hubport,id=n1,hubid=1" in cmd and "bootindex" not in cmd
        # The uncabled NIC comes first on the command line, so first on the PCI bus.
        assert cmd.index(f"mac={bios.unwired_mac}") < cmd.index(f"mac={bios.mac}")
        cmd = pid_command(qemu_pid(uefi))
        assert f"mac={uefi.mac},bootindex=1" in cmd and f"mac={uefi.unwired_mac}," not in cmd
        # SeaBIOS runs the first NIC's iPXE, whose DHCP times out (net0, PCI 00:03),
        # then the second NIC's, where the cabled NIC is net1 (PCI 00:04).
        wanted = [
            (bios, [f"net0: {bios.unwired_mac} using virtio-net on 0000:00:03.0",
                    "No configuration methods",
                    f"net1: {bios.mac} using virtio-net on 0000:00:04.0"]),
            # OVMF starts with the NIC that has a bootindex: the cabled one, alone.
            (uefi, [f"net0: {uefi.mac} using virtio-net"]),
        ]  # fmt: skip
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < 2:
            for guest, lines in wanted:
                text = _text(Path(guest.serial_log))
                if guest.name not in seen and _in_order(text, lines):
                    seen[guest.name] = time.monotonic() - started
            time.sleep(0.5)
        for guest, lines in wanted:
            assert guest.name in seen, f"{guest.name}: {lines}\n{_text(Path(guest.serial_log))}"
        assert f"net0: {uefi.unwired_mac}" not in _text(Path(uefi.serial_log))
        # The failed first NIC costs SeaBIOS ~18 s (iPXE's DHCP timeout); OVMF nothing.
        assert seen["vm1"] > 15, seen
    finally:
        vrack.down(name, state_dir)
    assert not Path("/run/netns", f"pvd-{name}").exists()


def _in_order(text: str, lines: list[str]) -> bool:
    at = 0
    for line in lines:
        at = text.find(line, at)
        if at < 0:
            return False
    return True


def test_more_two_nic_guests_than_guests_is_refused() -> None:
    require("ip", "qemu-system-x86_64")
    result = CliRunner().invoke(app, ["rack", "up", "2", "--two-nics", "3", "--name", "nicsbad"])
    assert result.exit_code == 1, result.output
    assert "--two-nics 3 with 2 guest(s)" in result.output and "give 0 to 2" in result.output
    assert not Path("/run/netns/pvd-nicsbad").exists()
