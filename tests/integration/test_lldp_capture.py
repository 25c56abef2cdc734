"""LLDP for real: the rack's switch speaks on one end of a veth, the agent's capture hears
it on the other, each inside a network namespace this test creates (and deletes).

The switch is :class:`provisiond.rack.lldp_switch.Speaker` with a rack whose "taps" are
veth ends; the capture is :func:`provisiond.agent.lldp.capture` run on a thread that
joined the listening namespace (``run_in_netns``), or the agent program itself under
``ip netns exec``. Needs root and iproute2; skipped otherwise (failed under CI).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from provisiond.agent import AGENT_DIR, lldp
from provisiond.netboot.netns_socket import run_in_netns
from provisiond.rack.lldp_switch import Speaker
from provisiond.rack.vrack_files import GuestState, RackState, switch_chassis_mac, switch_name
from tests.support.netns import Lab, _run, require

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
HOST_MACS = ("52:54:00:14:00:01", "52:54:00:14:00:02")


@pytest.fixture
def lab() -> Iterator[Lab]:
    require("ip")
    with Lab() as lab:
        yield lab


def rack_on(netns: str, taps: list[str], swap: list[str] | None = None) -> RackState:
    """A rack state whose guest K's "tap" is ``taps[K-1]`` in ``netns``."""
    rack = RackState(
        name="lldprack", state_dir="/nonexistent", netns=netns, bridge="br0",
        subnet="10.214.0.0/24", boot_address="10.214.0.1", ipv6_prefix="fd00:214::/64",
        ipv6_address="fd00:214::1", http_port=8080, accel="tcg", bmc_username="admin",
        swap_cables=swap or [],
    )  # fmt: skip
    for k, tap in enumerate(taps, 1):
        rack.guests.append(
            GuestState(k, f"vm{k}", HOST_MACS[k - 1], f"10.214.0.{10 + k}", tap, "", "", "",
                       "127.0.0.1", 0, 64, 1, 4)
        )  # fmt: skip
    return rack


def capture_in(netns: str, interfaces: list[str], wait_s: float, **kw: Any) -> dict[str, Any]:
    return run_in_netns(netns, lambda: lldp.capture(interfaces, wait_s, **kw), timeout=wait_s + 10)


def switch_and_host(lab: Lab, ports: int = 1) -> tuple[str, str]:
    """Namespace ``sw`` with veth ends ``swp1..`` cabled to ``eth0..`` in namespace ``host``."""
    sw, host = lab.netns("sw"), lab.netns("host")
    for k in range(ports):
        lab.veth(host, f"eth{k}", sw, f"swp{k + 1}", mac=HOST_MACS[k])
    return sw, host


def test_the_switch_is_heard_on_the_other_end_of_a_cable(lab: Lab) -> None:
    sw, host = switch_and_host(lab)
    rack = rack_on(sw, ["swp1"])
    with Speaker(rack, interval_s=0.3) as speaker:
        started = time.monotonic()
        heard = capture_in(host, ["eth0"], 10)
        took = time.monotonic() - started
    assert speaker.sent >= 1 and not speaker.failed
    assert took < 5, f"capture waited {took:.1f}s although a frame came every 0.3s"
    assert heard == {
        "eth0": {
            "interface": "eth0", "mac": HOST_MACS[0],
            "chassis_id": switch_chassis_mac("lldprack"), "chassis_id_subtype": "mac",
            "system_name": switch_name("lldprack"),
            "system_description": "provisiond virtual switch of rack lldprack",
            "port_id": "swp1", "port_id_subtype": "interface_name", "port_description": "vm1",
            "mgmt_addresses": ["10.214.0.1"], "vlans": [], "pvid": None, "ttl": 1,
        }
    }  # fmt: skip
    assert int(switch_chassis_mac("lldprack").split(":")[0], 16) & 0x02  # locally administered


def test_swapped_cables_announce_each_guests_port_to_the_other(lab: Lab) -> None:
    sw, host = switch_and_host(lab, ports=2)
    with Speaker(rack_on(sw, ["swp1", "swp2"]), interval_s=0.3):
        straight = capture_in(host, ["eth0", "eth1"], 10)
    with Speaker(rack_on(sw, ["swp1", "swp2"], swap=["vm1", "vm2"]), interval_s=0.3):
        swapped = capture_in(host, ["eth0", "eth1"], 10)
    assert [(n["port_id"], n["port_description"]) for n in straight.values()] == [
        ("swp1", "vm1"), ("swp2", "vm2"),
    ]  # fmt: skip
    assert swapped["eth0"]["port_id"] == "swp2" and swapped["eth0"]["port_description"] == "vm2"
    assert swapped["eth1"]["port_id"] == "swp1" and swapped["eth1"]["mac"] == HOST_MACS[1]


def test_nothing_is_heard_within_the_bounded_wait_without_a_speaker(lab: Lab) -> None:
    _sw, host = switch_and_host(lab)
    skipped: dict[str, str] = {}
    started = time.monotonic()
    heard = capture_in(host, ["eth0", "nosuch0"], 1.5, skipped=skipped)
    took = time.monotonic() - started
    assert heard == {}
    assert 1.4 <= took < 4, took
    assert list(skipped) == ["nosuch0"] and skipped["nosuch0"]  # the reason, not a crash


def send_in(netns: str, interface: str, frames: list[bytes]) -> None:
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((interface, 0))
            for frame in frames:
                sock.send(frame)

    run_in_netns(netns, send, timeout=10)


def test_own_frames_are_not_neighbours(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own LLDP frames (an lldpd there) and frames carrying its MAC are ignored;
    the first real neighbour's frame after them is the one reported."""
    sw, host = switch_and_host(lab)
    opened = threading.Event()
    real_open = lldp._open

    def open_and_tell(interface: str) -> tuple[socket.socket, bytes]:
        sock_and_mac = real_open(interface)  # bound, in LLDP's group: frames queue from here
        opened.set()
        return sock_and_mac

    monkeypatch.setattr(lldp, "_open", open_and_tell)
    own = lldp.encode({"chassis_id": HOST_MACS[0], "port_id": "eth0"}, source_mac=HOST_MACS[0])
    real = lldp.encode({"chassis_id": "02:00:00:00:00:99", "port_id": "swp1"},
                       source_mac="02:00:00:00:00:99")  # fmt: skip
    result: dict[str, Any] = {}

    def listen() -> None:
        result.update(lldp.capture(["eth0"], 5))

    listener = threading.Thread(target=lambda: run_in_netns(host, listen, timeout=15))
    listener.start()
    try:
        assert opened.wait(10), "the capture did not open its socket"
        send_in(host, "eth0", [own])  # outgoing from the host itself
        send_in(sw, "swp1", [own])  # arrives, but with the host's own MAC as source
        time.sleep(0.3)
        send_in(sw, "swp1", [real])
    finally:
        listener.join(20)
    assert result["eth0"]["chassis_id"] == "02:00:00:00:00:99"


def test_through_a_linux_bridge_only_with_group_fwd_mask(lab: Lab) -> None:
    """A bridge keeps 01:80:c2:00:00:0e to itself (the reason the rack's switch writes on
    each tap); with bit 14 of group_fwd_mask set it forwards LLDP like any frame."""
    l2, sw, host = lab.netns("l2"), lab.netns("sw"), lab.netns("host")
    lab.bridge(l2)
    lab.veth(sw, "swp1", l2, "p-sw")
    lab.veth(host, "eth0", l2, "p-host", mac=HOST_MACS[0])
    lab.enslave(l2, "p-sw")
    lab.enslave(l2, "p-host")
    rack = rack_on(sw, ["swp1"])
    with Speaker(rack, interval_s=0.3):
        assert capture_in(host, ["eth0"], 1.5) == {}
        _run("ip", "-n", l2, "link", "set", "br0", "type", "bridge", "group_fwd_mask", "0x4000")
        heard = capture_in(host, ["eth0"], 10)
    assert heard["eth0"]["port_id"] == "swp1"
    assert heard["eth0"]["system_name"] == switch_name("lldprack")


def test_the_agent_program_reports_the_switch(lab: Lab) -> None:
    """agent.py --print-inventory inside the host namespace, as a machine runs it: Debian's
    python3 in isolated mode, so lldp.py comes from the agent's folder, not provisiond."""
    sw, host = switch_and_host(lab)
    with Speaker(rack_on(sw, ["swp1"]), interval_s=0.3):
        done = subprocess.run(
            ["ip", "netns", "exec", host, PYTHON, "-I", "-S", str(AGENT_DIR / "agent.py"),
             "--print-inventory", "--lldp-wait", "10"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (neighbour,) = report["lldp"]
    assert neighbour["interface"] == "eth0" and neighbour["mac"] == HOST_MACS[0]
    assert (neighbour["port_id"], neighbour["system_name"]) == ("swp1", "lldprack-sw1")
    assert {n["mac"] for n in report["nics"]} == {HOST_MACS[0]}


def test_the_speaker_stops_and_closes_its_sockets(lab: Lab) -> None:
    sw, _host = switch_and_host(lab)
    speaker = Speaker(rack_on(sw, ["swp1"]), interval_s=0.2).start()
    thread = speaker._thread
    assert thread is not None and thread.is_alive()
    sockets = [sock for _tap, sock, _frame in speaker._sockets]
    speaker.stop()
    assert not thread.is_alive() and all(sock.fileno() == -1 for sock in sockets)
    missing = Speaker(rack_on(sw, ["nosuch0"]))
    with pytest.raises(OSError, match="cannot send on the taps"):
        missing.start()
