"""The boot path at the daemon level: a real ``provisiond serve`` with a provisioning
network in a namespace this module creates, its supervised dnsmasq, and real clients.

The namespace and bridge come from :func:`provisiond.rack.vrack.up` (one guest, which
stays off: only the namespace, ``br0`` and the config snippet are used). A client
namespace from :class:`tests.support.netns.Lab` joins ``br0`` through a veth whose
MAC is the test machine's, and runs busybox ``udhcpc`` and ``wget`` there.

What is proved, through the HTTP API and the processes the daemon runs:

- /healthz reports ``dnsmasq:<net>: ok``;
- creating, patching and deleting a machine writes, rewrites and removes exactly its
  one ``dhcp-hostsdir`` file, with dnsmasq's PID unchanged throughout, and the
  client gets the fixed address from it (and the iPXE script over the in-namespace
  boot listener);
- a SIGKILLed dnsmasq is replaced within seconds and /healthz recovers;
- a SIGKILLed daemon takes its dnsmasq with it (PR_SET_PDEATHSIG), and a restarted
  daemon kills a stale dnsmasq named by the pidfile before starting its own.

Every process is stopped by PID and both namespaces are deleted in finalizers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisiond.netboot.dnsmasq_conf import DnsmasqPaths, host_filename
from provisiond.networks import ProvisioningNetwork
from provisiond.rack import vrack
from provisiond.rack.qemu import kill_recorded, pid_alive, pid_command
from tests.support.daemon import Daemon
from tests.support.netns import Lab, require

pytestmark = pytest.mark.slow

SUBNET = "10.216.0"
MAC = "52:54:00:21:60:01"
PXE_BIOS = ("0x5d:0000",)  # option 93: x86 BIOS
MACHINE = "nb-01"


@dataclass
class Env:
    rack: vrack.RackState
    net: ProvisioningNetwork
    paths: DnsmasqPaths
    daemon: Daemon
    lab: Lab
    client: str
    #: Every dnsmasq PID seen, so teardown can make sure none outlives the module.
    seen: set[int]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.daemon.url + "/api/v1",
            headers={"authorization": f"Bearer {self.daemon.admin_token}"},
            timeout=30,
        )

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(self.daemon.url + "/healthz", timeout=5)
        body: dict[str, Any] = r.json()
        return r.status_code, body

    def dnsmasq_pid(self) -> int:
        """The running dnsmasq: from its pidfile, checked to be the daemon's child."""
        pid = int((self.paths.root / "dnsmasq.pid").read_text().strip())
        assert pid_alive(pid), pid
        assert "dnsmasq" in pid_command(pid) and str(self.paths.conf) in pid_command(pid)
        assert self.daemon.proc is not None
        assert _ppid(pid) == self.daemon.proc.pid
        self.seen.add(pid)
        return pid

    def host_files(self) -> dict[str, str]:
        hosts = self.paths.hosts
        return {p.name: p.read_text() for p in hosts.iterdir() if not p.name.startswith(".")}

    def lease(self, expected_ip: str) -> dict[str, str]:
        """One PXE-flavoured udhcpc run; a second one if inotify had not caught up yet."""
        got: dict[str, str] = {}
        for _ in range(2):
            got = self.lab.udhcpc(
                self.client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS
            )
            if got.get("ip") == expected_ip:
                break
            self.bounce()
            time.sleep(0.5)
        return got

    def bounce(self) -> None:
        for state in ("down", "up"):
            subprocess.run(
                ["ip", "-n", self.client, "link", "set", "c0", state], check=True, timeout=10
            )


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return -1


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require("ip", "dnsmasq", "busybox", "timeout")
    if not Path("/usr/lib/ipxe/undionly.kpxe").is_file():
        require("ipxe-binaries-in-/usr/lib/ipxe")
    root = tmp_path_factory.mktemp("daemon-netboot")
    name = f"nb{secrets.token_hex(3)}"
    state_dir = root / "rack"
    lab = Lab()
    seen: set[int] = set()
    daemon: Daemon | None = None
    try:
        rack = vrack.up(
            1, name=name, state_dir=state_dir, subnet=f"{SUBNET}.0/24", ipv6_prefix="fd00:216::/64"
        )
        client = lab.netns("cli")
        lab.veth(client, "c0", rack.netns, "v-cli", mac=MAC)
        lab.enslave(rack.netns, "v-cli")
        config = root / "provisiond.toml"
        config.write_text(vrack.network_toml(rack) + 'dnsmasq_user = "root"\n')
        daemon = Daemon(root / "data", extra_env={"PROVISIOND_CONFIG": str(config)})
        daemon.data_dir.mkdir(parents=True)
        daemon.prepare()
        net = ProvisioningNetwork(
            name=rack.name,
            interface=rack.bridge,
            subnet=rack.subnet,
            boot_address=rack.boot_address,
            range_start=f"{SUBNET}.100",
            range_end=f"{SUBNET}.200",
            netns=rack.netns,
        )
        paths = DnsmasqPaths.for_network(daemon.data_dir, net)
        yield Env(rack, net, paths, daemon, lab, client, seen)
    finally:
        if daemon is not None:
            daemon.stop()
        for pid in seen:  # only dnsmasqs this module's daemons ran, checked by command line
            kill_recorded(pid, "dnsmasq", signal.SIGKILL, wait_s=3)
        lab.close()
        vrack.down(name, state_dir)
    assert not Path("/run/netns", f"pvd-{name}").exists()


@pytest.fixture
def running(env: Env) -> Env:
    """The module's daemon, started if a previous test left it stopped, and healthy."""
    if env.daemon.proc is None or env.daemon.proc.poll() is not None:
        env.daemon.start(timeout=30)
    return env


def test_healthz_reports_dnsmasq_ok(running: Env) -> None:
    status, body = running.health()
    assert status == 200, body
    assert body["checks"] == {"db": "ok", f"dnsmasq:{running.net.name}": "ok"}
    running.dnsmasq_pid()


def test_host_files_follow_the_api_without_restarting_dnsmasq(running: Env) -> None:
    env = running
    pid = env.dnsmasq_pid()
    before = env.host_files()
    assert before == {}  # nothing in the DB yet: the start-up sync left the folder empty
    fixed, moved = f"{SUBNET}.20", f"{SUBNET}.21"

    with env.api() as api:
        nic = {"mac": MAC, "name": "eth0", "pxe": True, "ip_address": fixed}
        r = api.post("/machines", json={"name": MACHINE, "nics": [nic]})
        assert r.status_code == 201, r.text
        file = host_filename(MACHINE)
        assert env.host_files() == {file: f"{MAC},{fixed},set:provisiond,{MACHINE}\n"}
        assert env.dnsmasq_pid() == pid

        # A PXE client with that MAC on the bridge gets the fixed address and iPXE...
        lease = env.lease(fixed)
        assert lease["ip"] == fixed, lease
        assert lease["serverid"] == f"{SUBNET}.1"
        assert lease["bootfile"] == "undionly.kpxe"
        assert lease.get("hostname") == MACHINE
        # ...and, with it, reaches the boot listener inside the namespace.
        subprocess.run(
            ["ip", "-n", env.client, "addr", "add", f"{fixed}/24", "dev", "c0"],
            check=True,
            timeout=10,
        )
        url = f"http://{SUBNET}.1:{env.rack.http_port}/boot/ipxe"
        wget = subprocess.run(
            ["timeout", "10", "ip", "netns", "exec", env.client,
             "busybox", "wget", "-q", "-O", "-", url],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        subprocess.run(
            ["ip", "-n", env.client, "addr", "flush", "dev", "c0"], check=True, timeout=10
        )
        assert wget.returncode == 0, wget.stderr
        assert wget.stdout.startswith("#!ipxe"), wget.stdout
        assert f"{SUBNET}.1:{env.rack.http_port}/boot/" in wget.stdout

        # A changed address rewrites that one file; dnsmasq re-reads it (same PID).
        nic["ip_address"] = moved
        r = api.patch(f"/machines/{MACHINE}", json={"nics": [nic]})
        assert r.status_code == 200, r.text
        assert env.host_files() == {file: f"{MAC},{moved},set:provisiond,{MACHINE}\n"}
        assert env.dnsmasq_pid() == pid
        env.bounce()
        lease = env.lease(moved)
        assert lease["ip"] == moved, lease
        assert env.dnsmasq_pid() == pid

        # A PATCH that changes nothing dnsmasq sees leaves the file alone.
        mtime = (env.paths.hosts / file).stat().st_mtime_ns
        r = api.patch(f"/machines/{MACHINE}", json={"tags": ["netboot-test"]})
        assert r.status_code == 200, r.text
        assert (env.paths.hosts / file).stat().st_mtime_ns == mtime

        r = api.delete(f"/machines/{MACHINE}")
        assert r.status_code == 204, r.text
        assert env.host_files() == {}
        assert env.dnsmasq_pid() == pid
    status, body = env.health()
    assert status == 200, body


def test_killed_dnsmasq_is_restarted_and_healthz_says_so(running: Env) -> None:
    env = running
    old = env.dnsmasq_pid()
    os.kill(old, signal.SIGKILL)
    down_reasons: list[str] = []
    key = f"dnsmasq:{env.net.name}"

    def replaced() -> bool:
        status, body = env.health()
        if status != 200:
            down_reasons.append(str(body["checks"].get(key)))
            return False
        with contextlib.suppress(OSError, ValueError):
            pid = int((env.paths.root / "dnsmasq.pid").read_text().strip())
            return pid != old and pid_alive(pid)
        return False

    assert wait_for(replaced, 15), down_reasons[-3:]
    new = env.dnsmasq_pid()
    assert new != old and not pid_alive(old)
    status, body = env.health()
    assert status == 200 and body["checks"][key] == "ok", body
    # The gap is short (0.5 s backoff); when it was seen, it must say what is down.
    print(f"/healthz while dnsmasq was down ({len(down_reasons)} polls): {down_reasons[:1]}")
    for reason in down_reasons:
        assert reason.startswith("down: dnsmasq "), down_reasons
    metrics = httpx.get(env.daemon.url + "/metrics", timeout=5).text
    assert f'provisiond_dnsmasq_up{{network="{env.net.name}"}} 1.0' in metrics


def test_sigkilled_daemon_takes_dnsmasq_and_restart_kills_a_stale_one(running: Env) -> None:
    env = running
    daemon = env.daemon
    assert daemon.proc is not None
    first = env.dnsmasq_pid()
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    daemon.proc = None
    assert wait_for(lambda: not pid_alive(first), 10), pid_command(first)

    # A crash PR_SET_PDEATHSIG could not cover (say, the daemon's own parent process
    # tree was torn down oddly) leaves a dnsmasq on the same config holding port 67:
    # play that with a dnsmasq of our own, named by the pidfile as the daemon left it.
    exe = shutil.which("dnsmasq")
    assert exe is not None
    log = env.lab.tmp / "stale.log"
    with open(log, "wb") as out:
        stale = subprocess.Popen(
            ["ip", "netns", "exec", env.rack.netns, exe, "--keep-in-foreground",
             f"--conf-file={env.paths.conf}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert wait_for(lambda: "started, version" in log.read_text(), 10), log.read_text()
        (env.paths.root / "dnsmasq.pid").write_text(f"{stale.pid}\n")

        daemon.start(timeout=30)
        assert stale.wait(5) == -signal.SIGKILL
        fresh = env.dnsmasq_pid()
        assert fresh not in (first, stale.pid)
        status, body = env.health()
        assert status == 200, body
        assert body["checks"][f"dnsmasq:{env.net.name}"] == "ok"
        # And it serves: the port was really freed for the new dnsmasq.
        lease = env.lab.udhcpc(env.client, vendor_class="PXEClient:Arch:00000", options=PXE_BIOS)
        assert lease["serverid"] == f"{SUBNET}.1"
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait(5)

    # A clean stop takes dnsmasq down as well.
    assert daemon.stop() == 0
    assert wait_for(lambda: not pid_alive(fresh), 5)
