"""The BMC simulator against its real clients: ipmitool (lanplus) and pyghmi's Command.

Every farm gets its own loopback address and a port range the farm bind-probes itself,
because pyghmi caches sessions per address and port for the life of the process.
Farms run on a background thread (BmcFarm) or as ``python -m provisiond sim bmc``
child processes, which are stopped by PID even when a test fails.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command, fru
from pyghmi.ipmi.private import session

from provisiond.rack import BmcFarm, BootDevice, Faults, FaultSpecError, check_loopback
from provisiond.rack.ipmi_bmc import SimBmc
from provisiond.rack.ipmi_faults import faults_for, parse_fault
from provisiond.rack.ipmi_machine import BmcIdentity, InMemoryMachine
from provisiond.rack.ipmi_records import fru_image

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"listening on (?P<host>[\d.]+):(?P<first>\d+)-(?P<last>\d+)/udp")
_addresses = itertools.count(random.randrange(0, 40_000))


def fresh_address() -> str:
    """A loopback address no earlier farm in this process used."""
    n = next(_addresses)
    return f"127.{77 + n // 62_500 % 100}.{n // 250 % 250}.{n % 250 + 2}"


def new_farm(count: int = 1, **kwargs: object) -> BmcFarm:
    return BmcFarm(count, address=fresh_address(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ipmitool() -> str:
    path = shutil.which("ipmitool") or "/usr/bin/ipmitool"
    if not os.path.exists(path):
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("ipmitool is missing; scripts/bootstrap.sh must apt-get install ipmitool")
        pytest.skip("ipmitool is not installed (apt-get install ipmitool)")
    return path


def run_ipmitool(
    tool: str, farm: BmcFarm, index: int, *args: str, password: str = "password", cipher: str = "3"
) -> subprocess.CompletedProcess[str]:
    host, port = farm.endpoint(index)
    return subprocess.run(
        [tool, "-I", "lanplus", "-C", cipher, "-H", host, "-p", str(port), "-U", "admin",
         "-P", password, "-N", "1", "-R", "2", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def ipmi_ok(tool: str, farm: BmcFarm, index: int, *args: str) -> str:
    result = run_ipmitool(tool, farm, index, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def login(farm: BmcFarm, index: int, password: str = "password") -> command.Command:
    host, port = farm.endpoint(index)
    return command.Command(bmc=host, port=port, userid="admin", password=password)


def forget_failed_login(farm: BmcFarm, index: int) -> None:
    """Work around a pyghmi 1.6.19 defect before logging in again after a failed login.

    A failed login leaves its dead Session in ``Session.initting_sessions`` (added under
    a str key, removed under a bytes key), and every later Command to the same BMC and
    credentials in this process gets that dead session back.
    """
    host, port = farm.endpoint(index)
    session.Session.initting_sessions.pop((host, "admin", "password", port, None), None)


def auth_caps_probe(host: str, port: int, timeout: float = 0.3) -> bool:
    """Sessionless Get Channel Authentication Capabilities: does anything answer?"""
    header = bytes([0x20, 6 << 2])
    body = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])
    message = header + bytes([-sum(header) & 0xFF]) + body + bytes([-sum(body) & 0xFF])
    packet = b"\x06\x00\xff\x07\x00" + bytes(8) + bytes([len(message)]) + message
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (host, port))
        try:
            reply, _ = sock.recvfrom(512)
        except TimeoutError:
            return False
    return reply[:4] == b"\x06\x00\xff\x07"


def wait_until(predicate: object, timeout: float, step: float = 0.1) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(step)
    pytest.fail(f"condition not met within {timeout} s")


# -- pure parts ---------------------------------------------------------------------


def test_fault_specs_parse_and_target_bmcs() -> None:
    rules = [parse_fault("latency=50"), parse_fault("drop=0.5@1,3-4"), parse_fault("busy@4")]
    assert faults_for(0, rules) == Faults(latency_ms=50)
    assert faults_for(3, rules) == Faults(latency_ms=50, drop=0.5)
    assert faults_for(4, rules) == Faults(latency_ms=50, drop=0.5, busy=True)
    assert parse_fault("reset=5/60").changes == {"reset_s": 5.0, "reset_period_s": 60.0}
    assert parse_fault("wrong-password@2").targets == frozenset({2})
    for bad in ("bogus", "drop=2", "latency", "reset=5/2", "busy@x", "drop=0.1@5-1"):
        with pytest.raises(FaultSpecError):
            parse_fault(bad)


@pytest.mark.parametrize("address", ["10.0.0.1", "0.0.0.0", "::1", "bmc.example"])  # noqa: S104
def test_only_loopback_addresses_are_accepted(address: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|IPv4"):
        check_loopback(address)
    with pytest.raises(ValueError):
        BmcFarm(1, address=address)


def test_fru_image_parses_with_pyghmi() -> None:
    identity = BmcIdentity.default("127.0.0.9", 16042)
    info = fru.FRU(rawdata=fru_image(identity)).info
    assert info["Serial Number"] == identity.serial
    assert info["Chassis serial number"] == identity.serial
    assert info["Manufacturer"] == "provisiond"
    assert info["product_extra"] == [identity.nic_mac]


def test_bmc_logic_survives_garbage_without_a_network() -> None:
    sent: list[bytes] = []
    bmc = SimBmc(
        BmcIdentity.default("127.0.0.1", 623), InMemoryMachine(), lambda p, a: sent.append(p)
    )
    rng = random.Random(5)
    heads = [b"", b"\x06\x00\xff\x07\x00", b"\x06\x00\xff\x07\x06\x10", b"\x06\x00\xff\x07\x06\x12"]
    for _ in range(5000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        bmc.datagram_received(rng.choice(heads) + noise, ("127.0.0.1", 9))
    assert len(bmc.sessions) <= 32


# -- ipmitool -----------------------------------------------------------------------


def test_ipmitool_power_commands(ipmitool: str) -> None:
    with new_farm(2) as farm:
        assert "Chassis Power is off" in ipmi_ok(ipmitool, farm, 0, "chassis", "power", "status")
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "on")
        assert farm.state(0).power == "on"
        assert "Chassis Power is on" in ipmi_ok(ipmitool, farm, 0, "chassis", "power", "status")
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "cycle")
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "reset")
        assert farm.state(0).power == "on" and len(farm.state(0).boots) == 3
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "soft")
        assert farm.state(0).power == "off"
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "on")
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "off")
        assert farm.state(0).power == "off"
        # Like most real BMCs: a cycle needs a running machine.
        cycle = run_ipmitool(ipmitool, farm, 0, "chassis", "power", "cycle")
        assert cycle.returncode != 0 and "not supported in present state" in cycle.stderr
        assert farm.state(1).power == "off"  # the neighbour saw none of it


def test_ipmitool_bootdev_and_bootparam(ipmitool: str) -> None:
    with new_farm(1) as farm:
        ipmi_ok(ipmitool, farm, 0, "chassis", "bootdev", "pxe", "options=persistent,efiboot")
        out = ipmi_ok(ipmitool, farm, 0, "chassis", "bootparam", "get", "5")
        assert "Force PXE" in out and "all future boots" in out and "EFI" in out
        state = farm.state(0)
        assert (state.bootdev, state.persistent, state.uefi) == ("pxe", True, True)

        # A one-time device is used by the next boot, then cleared, as firmware does.
        ipmi_ok(ipmitool, farm, 0, "chassis", "bootdev", "disk")
        assert "Force Boot from default Hard-Drive" in ipmi_ok(
            ipmitool, farm, 0, "chassis", "bootparam", "get", "5"
        )
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "on")
        state = farm.state(0)
        assert state.boots[-1] == BootDevice("disk") and state.bootdev == "none"


def test_ipmitool_fru_mc_info_and_lan(ipmitool: str) -> None:
    with new_farm(1) as farm:
        identity = farm.bmc(0).identity
        fru = ipmi_ok(ipmitool, farm, 0, "fru", "print", "0")
        assert re.search(rf"Product Serial\s+: {identity.serial}", fru)
        assert re.search(r"Product Manufacturer\s+: provisiond", fru)
        assert re.search(rf"Product Extra\s+: {identity.nic_mac}", fru)
        mc = ipmi_ok(ipmitool, farm, 0, "mc", "info")
        assert re.search(r"IPMI Version\s+: 2.0", mc)
        lan = ipmi_ok(ipmitool, farm, 0, "lan", "print", "1")
        assert re.search(rf"MAC Address\s+: {identity.bmc_mac}", lan)
        assert re.search(rf"IP Address\s+: {re.escape(identity.address)}", lan)


def test_ipmitool_rejects_wrong_password_and_other_cipher_suites(ipmitool: str) -> None:
    with new_farm(1) as farm:
        started = time.monotonic()
        wrong = run_ipmitool(ipmitool, farm, 0, "chassis", "power", "status", password="nope")
        assert wrong.returncode != 0
        assert time.monotonic() - started < 5  # refused at once, not by timeout
        suite17 = run_ipmitool(ipmitool, farm, 0, "chassis", "power", "status", cipher="17")
        assert suite17.returncode != 0 and "no matching cipher suite" in suite17.stderr
        assert "Chassis Power" in ipmi_ok(ipmitool, farm, 0, "chassis", "power", "status")


def test_ipmitool_cold_reset_keeps_power(ipmitool: str) -> None:
    with new_farm(1) as farm:
        ipmi_ok(ipmitool, farm, 0, "chassis", "power", "on")
        ipmi_ok(ipmitool, farm, 0, "mc", "reset", "cold")
        host, port = farm.endpoint(0)
        assert not auth_caps_probe(host, port)
        took = wait_until(lambda: auth_caps_probe(host, port), timeout=10)
        assert took < 3
        assert "Chassis Power is on" in ipmi_ok(ipmitool, farm, 0, "chassis", "power", "status")


# -- pyghmi ------------------------------------------------------------------------


def test_pyghmi_default_negotiation_power_boot_and_identity() -> None:
    with new_farm(1) as farm:
        # pyghmi proposes cipher suite 17 first; refusing it (status 0x11) makes it
        # fall back to suite 3 instead of crashing in _got_rakp2.
        cmd = login(farm, 0)
        assert cmd.get_power() == {"powerstate": "off"}
        assert cmd.set_power("on", wait=5) == {"powerstate": "on"}
        assert farm.state(0).power == "on"
        assert cmd.set_power("on", wait=5) == {"powerstate": "on"}  # already on is fine
        cmd.set_bootdev("network", persist=True, uefiboot=True)
        assert cmd.get_bootdev() == {"bootdev": "network", "persistent": True, "uefimode": True}
        state = farm.state(0)
        assert (state.bootdev, state.persistent, state.uefi) == ("pxe", True, True)
        assert cmd.set_power("off", wait=5) == {"powerstate": "off"}

        identity = farm.bmc(0).identity
        device = cmd._get_device_id()
        assert device["firmware_version"] == "1.00" and device["manufacturer_id"] == 0
        system = dict(cmd.get_inventory())["System"]
        assert system["Serial Number"] == identity.serial
        assert system["product_extra"] == [identity.nic_mac]
        assert system["UUID"].lower() == str(identity.uuid)
        assert cmd.get_net_configuration()["mac_address"] == identity.bmc_mac


def test_bmcs_in_one_process_keep_separate_state_under_concurrent_clients(ipmitool: str) -> None:
    with new_farm(4) as farm:
        # Log in one at a time: concurrent pyghmi logins from several threads can stall
        # one of them until the next keepalive deadline (~25 s), a pyghmi lost wakeup.
        # Both Commands share one client UDP socket, so BMCs must key sessions themselves.
        commands = [login(farm, 0), login(farm, 1)]
        barrier = threading.Barrier(3, timeout=30)

        def drive_with_pyghmi(index: int) -> None:
            barrier.wait()
            commands[index].set_power("on", wait=5)
            commands[index].set_bootdev("network" if index == 0 else "hd", persist=True)

        def drive_with_ipmitool() -> None:  # a second client on BMC 0 at the same time
            barrier.wait()
            ipmi_ok(ipmitool, farm, 0, "chassis", "power", "status")
            ipmi_ok(ipmitool, farm, 3, "chassis", "bootdev", "cdrom")

        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(drive_with_pyghmi, 0),
                pool.submit(drive_with_pyghmi, 1),
                pool.submit(drive_with_ipmitool),
            ]
            for future in futures:
                future.result(timeout=60)

        states = [farm.state(i) for i in range(4)]
        assert [s.power for s in states] == ["on", "on", "off", "off"]
        assert [s.bootdev for s in states] == ["pxe", "disk", "none", "cdrom"]
        assert [s.persistent for s in states] == [True, True, False, False]


# -- faults, seen from pyghmi --------------------------------------------------------


def test_fault_latency_adds_time() -> None:
    with new_farm(2, faults=[parse_fault("latency=100@1")]) as farm:
        timings = []
        for index in (0, 1):
            cmd = login(farm, index)
            started = time.monotonic()
            for _ in range(3):
                cmd.get_power()
            timings.append(time.monotonic() - started)
        assert timings[0] < 0.2
        assert timings[1] >= 0.3  # three round trips, 100 ms each


def test_fault_drop_all_times_out_and_partial_drop_is_retried() -> None:
    with new_farm(2, faults=[parse_fault("drop=1@0"), parse_fault("drop=0.2@1")], seed=2) as farm:
        started = time.monotonic()
        with pytest.raises(pyghmi_exc.IpmiException):
            login(farm, 0)
        assert time.monotonic() - started < 30
        assert farm.call(lambda: farm.bmc(0).dropped) == farm.call(lambda: farm.bmc(0).received)

        cmd = login(farm, 1)  # pyghmi retransmits what the dice dropped
        for _ in range(5):
            assert cmd.get_power() == {"powerstate": "off"}
        assert farm.call(lambda: farm.bmc(1).dropped) > 0


def test_fault_wrong_password_is_an_auth_error() -> None:
    with (
        new_farm(1, faults=[parse_fault("wrong-password")]) as farm,
        pytest.raises(pyghmi_exc.IpmiException, match="Incorrect password"),
    ):
        login(farm, 0)


def test_unknown_password_is_an_auth_error() -> None:
    with (
        new_farm(1) as farm,
        pytest.raises(pyghmi_exc.IpmiException, match="Incorrect password"),
    ):
        login(farm, 0, password="letmein")


def test_fault_no_resources_refuses_sessions() -> None:
    with new_farm(1, faults=[parse_fault("no-resources")]) as farm:
        with pytest.raises(pyghmi_exc.IpmiException, match="Insufficient resources"):
            login(farm, 0)
        farm.set_faults(0, Faults())
        forget_failed_login(farm, 0)
        assert login(farm, 0).get_power() == {"powerstate": "off"}


def test_fault_busy_answers_node_busy() -> None:
    with new_farm(1, faults=[parse_fault("busy")]) as farm:
        cmd = login(farm, 0)  # session set-up is not refused, commands are
        with pytest.raises(pyghmi_exc.IpmiException, match="Node Busy") as caught:
            cmd.get_power()
        assert caught.value.ipmicode == 0xC0


def test_fault_reset_goes_silent_then_recovers_with_power_kept() -> None:
    with new_farm(2, faults=[parse_fault("reset=1.5@1")]) as farm:
        # From a spec: BMC 1 is rebooting for the farm's first 1.5 s.
        host, port1 = farm.endpoint(1)
        assert not auth_caps_probe(host, port1)
        wait_until(lambda: auth_caps_probe(host, port1), timeout=10)

        # On demand: a rebooting BMC does not answer, and its machine keeps running.
        farm.set_power(0, True)
        farm.reset(0, 8.0)
        _, port0 = farm.endpoint(0)
        started = time.monotonic()
        with pytest.raises(pyghmi_exc.IpmiException):
            login(farm, 0)
        assert time.monotonic() - started < 8  # pyghmi gave up before the BMC was back
        assert farm.state(0).power == "on"
        wait_until(lambda: auth_caps_probe(host, port0), timeout=10)
        forget_failed_login(farm, 0)
        assert login(farm, 0).get_power() == {"powerstate": "on"}


def test_asf_presence_ping_gets_a_pong() -> None:
    with new_farm(1) as farm:
        host, port = farm.endpoint(0)
        ping = b"\x06\x00\xff\x06\x00\x00\x11\xbe\x80\x2a\x00\x00"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(ping, (host, port))
            pong, _ = sock.recvfrom(512)
        assert pong[4:10] == b"\x00\x00\x11\xbe\x40\x2a"  # IANA 4542, pong, our tag
        assert pong[20] & 0x80  # "IPMI supported"


# -- the command line, as a child process ------------------------------------------


@contextmanager
def sim_process(*args: str, ready_timeout: float = 30) -> Iterator[tuple[str, int, float]]:
    """Run ``provisiond sim bmc ARGS``; yield (address, first port, start-up seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisiond", "sim", "bmc", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen: list[str] = []
        deadline = started + ready_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"simulator not ready in {ready_timeout} s: {seen}")
            seen.append(line)
            match = READY.search(line)
            if match:
                break
        yield match["host"], int(match["first"]), time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cli_serves_until_sigterm(ipmitool: str) -> None:
    address = fresh_address()
    with sim_process("--count", "3", "--address", address, "--base-port", "0") as (host, first, _):
        assert host == address
        out = subprocess.run(
            [ipmitool, "-I", "lanplus", "-C", "3", "-H", host, "-p", str(first + 2), "-U",
             "admin", "-P", "password", "-N", "1", "-R", "2", "chassis", "power", "status"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "Chassis Power is off" in out.stdout


def test_cli_refuses_non_loopback_addresses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "provisiond", "sim", "bmc", "--address", "192.0.2.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "not a loopback address" in result.stderr


@pytest.mark.slow
def test_farm_of_1000_bmcs_starts_fast_and_answers(ipmitool: str) -> None:
    address = fresh_address()
    with sim_process("--count", "1000", "--address", address, "--base-port", "0") as (
        host,
        first,
        startup,
    ):
        assert startup < 15
        sample = [first + i for i in range(0, 1000, 20)] + [first + 999]

        def power(port: int) -> str:
            cmd = command.Command(bmc=host, port=port, userid="admin", password="password")
            return str(cmd.get_power()["powerstate"])

        # One at a time: see the lost-wakeup note above; the benchmark measures concurrency.
        assert [power(port) for port in sample] == ["off"] * len(sample)
        for port in (first, first + 500, first + 999):
            out = subprocess.run(
                [ipmitool, "-I", "lanplus", "-C", "3", "-H", host, "-p", str(port), "-U",
                 "admin", "-P", "password", "-N", "1", "-R", "2", "chassis", "power", "status"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert "Chassis Power is off" in out.stdout
