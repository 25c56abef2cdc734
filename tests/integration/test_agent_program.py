"""The real agent program (``provisiond/agent/agent.py``) against a real daemon over HTTP.

The daemon is the real app under uvicorn on a loopback port, in a thread, on a
SQLite file; the agent runs as a subprocess of Debian's own ``/usr/bin/python3``
(the interpreter a deployed machine has) with ``-I -S``, so no site-packages and
no provisiond are importable: a third-party import would fail here. The agent
reads this host's real /proc and /sys, and the test compares what the daemon
stored with what it reads itself. Actions are disabled (``--no-actions``): these
tests must never power the host off.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlmodel import col, select

from provisiond.agent import AGENT_DIR
from provisiond.agent import agent as agent_module
from provisiond.api import create_app
from provisiond.config import load_settings
from provisiond.container import Services
from provisiond.db import Database
from provisiond.deploy.agent_reports import issue_agent_token
from provisiond.lifecycle import Ev, advance
from provisiond.models import Deployment, Event, Machine, Nic, utcnow
from provisiond.secrets import SecretBox

AGENT = AGENT_DIR / "agent.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
#: Isolated: no PYTHON* variables, no user or system site-packages, no script dir on sys.path.
ISOLATED = [PYTHON, "-I", "-S", str(AGENT)]
NOT_DISKS = ("loop", "ram", "zram", "dm-", "sr", "fd", "nbd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    url: str
    services: Services


@pytest.fixture
def daemon(sqlite_db: Database, tmp_path: Path) -> Iterator[Daemon]:
    settings = load_settings(None, data_dir=tmp_path / "data", database_url=sqlite_db.url)
    services = Services(
        settings=settings, db=sqlite_db, secrets=SecretBox.from_key_file(settings.key_file)
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start in 10 s"
    try:
        yield Daemon(f"http://127.0.0.1:{port}", services)
    finally:
        server.should_exit = True
        thread.join(10)


def host_nics() -> list[tuple[str, str]]:
    """(name, MAC) of this host's hardware NICs, or of one virtual NIC if it has none."""
    found = []
    for nic in sorted(Path("/sys/class/net").iterdir()):
        mac = (nic / "address").read_text().strip()
        if nic.name != "lo" and len(mac) == 17 and mac != "00:00:00:00:00:00":
            found.append(((nic / "device").exists(), nic.name, mac))
    if not found:
        pytest.skip("this host has no NIC with an Ethernet address")
    hardware = [(name, mac) for real, name, mac in found if real]
    return hardware or [(found[0][1], found[0][2])]


def host_disks() -> list[dict[str, Any]]:
    disks = []
    for dev in sorted(Path("/sys/block").iterdir()):
        size = int((dev / "size").read_text()) * 512
        if dev.name.startswith(NOT_DISKS) or size == 0:
            continue
        model = dev / "device" / "model"
        disks.append(
            {
                "name": dev.name,
                "size_bytes": size,
                "model": model.read_text().strip() if model.exists() else "",
                "rotational": (dev / "queue" / "rotational").read_text().strip() == "1",
            }
        )
    return disks


def mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def make_machine(services: Services, name: str, events: list[Ev], *macs: str) -> tuple[str, str]:
    """A machine moved through ``events`` with NICs (the first PXE); (uuid, agent token)."""
    with services.db.transaction() as s:
        m = Machine(name=name)
        advance(s, m, Ev.ENROLL, actor="test")
        assert m.id is not None
        for i, mac in enumerate(macs):
            s.add(Nic(machine_id=m.id, mac=mac, pxe=i == 0))
        for ev in events:
            advance(s, m, ev, actor="test")
        return m.uuid, issue_agent_token(s, m)


def env_file(tmp_path: Path, url: str, machine: str, token: str) -> Path:
    path = tmp_path / "agent.env"
    path.write_text(
        "# written by the deploy engine\n"
        f"PROVISIOND_URL={url}\nPROVISIOND_MACHINE='{machine}'\n"
        f'export PROVISIOND_AGENT_TOKEN="{token}"\n'
    )
    path.chmod(0o600)
    return path


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ISOLATED, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def stored(services: Services, uuid: str) -> Machine:
    with services.db.read_session() as s:
        m = s.exec(select(Machine).where(Machine.uuid == uuid)).one()
        _ = m.nics
        return m


def test_inspection_with_the_real_agent_reports_this_host(daemon: Daemon, tmp_path: Path) -> None:
    nics = host_nics()
    uuid, token = make_machine(daemon.services, "this-host", [Ev.INSPECT], *(m for _, m in nics))
    env = env_file(tmp_path, daemon.url, uuid, token)
    started = time.monotonic()
    done = run_agent("--env-file", str(env), "--once", "--no-actions")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    replies = json.loads(done.stdout)
    assert replies["inventory"] == {"action": "poweroff", "interval_s": 15.0, "state": "available"}
    assert replies["heartbeat"]["state"] == "available"
    assert "daemon asks for action poweroff" in done.stderr
    assert "not running poweroff: --no-actions" in done.stderr
    m = stored(daemon.services, uuid)
    assert m.state == "available"
    assert m.cpus == os.cpu_count()
    assert m.ram_mib == mem_total_mib()
    assert m.disks == host_disks()
    assert m.agent_version == agent_module.AGENT_VERSION
    assert m.last_heartbeat_at is not None
    assert [(n.mac, n.name) for n in m.nics] == [(mac, name) for name, mac in nics]
    with daemon.services.db.read_session() as s:
        kinds = [e.event for e in s.exec(select(Event).order_by(col(Event.id)))]
    assert kinds[-2:] == ["inventory_reported", "done"]


def test_the_first_heartbeat_makes_the_deployed_machine_active(
    daemon: Daemon, tmp_path: Path
) -> None:
    steps = [Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY, Ev.BOOTED]
    uuid, token = make_machine(daemon.services, "deployed", steps, *(m for _, m in host_nics()))
    with daemon.services.db.transaction() as s:
        m = s.exec(select(Machine).where(Machine.uuid == uuid)).one()
        assert m.id is not None
        s.add(Deployment(machine_id=m.id, started_at=utcnow() - timedelta(seconds=30)))
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    done = run_agent(
        "--url", daemon.url, "--machine", uuid, "--token-file", str(token_file), "--once"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["heartbeat"] == {
        "action": None,
        "interval_s": 15.0,
        "state": "active",
    }
    assert stored(daemon.services, uuid).state == "active"
    with daemon.services.db.read_session() as s:
        dep = s.exec(select(Deployment)).one()
    assert dep.outcome == "active" and "agent_heartbeat" in dep.phases


def test_a_dead_daemon_first_in_the_list_is_skipped_for_the_next(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Several daemons: PROVISIOND_URL lists them; the one that is gone (a closed port
    here) costs one failed connect, and the report lands on the next."""
    uuid, token = make_machine(daemon.services, "multi", [Ev.INSPECT], "52:54:00:12:34:57")
    gone = f"http://127.0.0.1:{free_port()}"
    env = env_file(tmp_path, f"{gone} {daemon.url}", uuid, token)
    started = time.monotonic()
    done = run_agent("--env-file", str(env), "--once", "--no-actions")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    assert f"cannot reach {gone}/api/v1/agent/{uuid}" in done.stderr
    assert "trying the next daemon" in done.stderr
    assert done.stderr.count("trying the next daemon") == 1  # the good one then stays first
    assert stored(daemon.services, uuid).state == "available"


def test_a_wrong_token_fails_at_once_with_a_clear_message(daemon: Daemon, tmp_path: Path) -> None:
    uuid, token = make_machine(daemon.services, "n1", [Ev.INSPECT], "52:54:00:12:34:56")
    env = env_file(tmp_path, daemon.url, uuid, token[::-1])
    started = time.monotonic()
    done = run_agent("--env-file", str(env), "--once", "--no-actions")
    assert done.returncode == 1 and done.stdout == ""
    assert time.monotonic() - started < 10  # a 401 is not retried
    assert "inventory: the daemon rejected the agent token (HTTP 401)" in done.stderr
    assert "hint: check PROVISIOND_MACHINE and PROVISIOND_AGENT_TOKEN" in done.stderr
    assert token not in done.stderr and token[::-1] not in done.stderr
    assert "Traceback" not in done.stderr
    assert stored(daemon.services, uuid).state == "inspecting"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--once"], "missing PROVISIOND_URL (--url), PROVISIOND_MACHINE (--machine)"),
        (["--env-file", "/nonexistent/agent.env"], "cannot read --env-file /nonexistent"),
        (["--url", "ftp://x", "--machine", "m", "--token-file", "/etc/hostname"], "not an http"),
        (
            ["--url", "http://a ftp://b", "--machine", "m", "--token-file", "/etc/hostname"],
            "PROVISIOND_URL 'ftp://b' is not an http",
        ),
        (
            ["--url", "  ", "--machine", "m", "--token-file", "/etc/hostname"],
            "missing PROVISIOND_URL (--url)",
        ),
    ],
)
def test_bad_configuration_exits_2_naming_the_problem(args: list[str], message: str) -> None:
    done = run_agent(*args, timeout=20)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_print_inventory_is_json_without_a_network() -> None:
    done = run_agent("--print-inventory", timeout=30)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cpus"] == os.cpu_count() and report["ram_mib"] == mem_total_mib()
    assert report["disks"] == host_disks()
    assert report["kernel"] == os.uname().release
    assert report["firmware"] == ("uefi" if os.path.isdir("/sys/firmware/efi") else "bios")
    assert {n["mac"] for n in report["nics"]} >= {mac for _, mac in host_nics()}
    assert set(report["dmi"]) == {"sys_vendor", "product_name", "product_serial"}
    assert isinstance(report["lldp"], list)


def test_the_agent_imports_only_the_standard_library() -> None:
    """agent.py and lldp.py, which travels with it: the stdlib, and lldp from
    provisiond.agent or (on a machine, as here under -I -S) from agent.py's own folder."""
    for program in (AGENT, AGENT_DIR / "lldp.py"):
        tree = ast.parse(program.read_text())
        imported = {
            (node.module or "" if isinstance(node, ast.ImportFrom) else alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        own = {"provisiond.agent", "lldp"} if program == AGENT else set()
        tops = {name.split(".")[0] for name in imported - own}
        assert tops - {"__future__"} <= set(sys.stdlib_module_names), imported
        assert "provisiond" not in tops, imported


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` POSTs, then a reply with an action."""

    failures = 2
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers["authorization"], **body})
        fail = len(self.seen) <= self.failures
        payload = (
            {"error": {"code": "database_unavailable", "message": "busy", "hint": ""}}
            if fail
            else {"action": "poweroff", "interval_s": 99999, "state": "available"}
        )
        data = json.dumps(payload).encode()
        self.send_response(503 if fail else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


def test_retries_back_off_with_jitter_then_run_the_action() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pauses: list[float] = []
    actions: list[str] = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = agent_module.Client(url, "m-1", "tok")
        agent = agent_module.Agent(client, run_action=actions.append, sleep=pauses.append)
        reply = agent.report("heartbeat")
    finally:
        server.shutdown()
        server.server_close()
    assert reply["action"] == "poweroff" and actions == ["poweroff"]
    assert len(_Flaky.seen) == 3
    assert {s["path"] for s in _Flaky.seen} == {"/api/v1/agent/m-1/heartbeat"}
    assert {s["auth"] for s in _Flaky.seen} == {"Bearer tok"}
    assert 1 <= pauses[0] <= 1.5 and 2 <= pauses[1] <= 3
    assert agent.interval == 3600  # the reply's interval, clamped


def test_an_unreachable_daemon_is_retried_a_bounded_number_of_times() -> None:
    client = agent_module.Client(f"http://127.0.0.1:{free_port()}", "m-1", "tok")
    pauses: list[float] = []
    with pytest.raises(agent_module.ReportError) as caught:
        agent_module.send(client, "heartbeat", dict, sleep=pauses.append)
    assert not caught.value.fatal and "cannot reach" in str(caught.value)
    assert len(pauses) == len(agent_module.BACKOFF)


BUSYBOX_APPLETS = ("sh", "cat", "tr", "grep", "kill", "sleep", "mkdir", "dirname", "rm", "tail")


def test_the_init_script_runs_the_agent_under_busybox(daemon: Daemon, tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    bin_dir = tmp_path / "bin"  # only busybox applets on PATH, as in a ramdisk
    bin_dir.mkdir()
    for applet in BUSYBOX_APPLETS:
        (bin_dir / applet).symlink_to(busybox)
    steps = [Ev.INSPECT, Ev.DONE, Ev.ALLOCATE, Ev.DEPLOY, Ev.BOOTED, Ev.READY]
    uuid, token = make_machine(daemon.services, "init", steps, "52:54:00:65:43:21")
    program = tmp_path / "opt" / "agent.py"
    program.parent.mkdir()
    shutil.copy(AGENT, program)
    shutil.copy(AGENT_DIR / "lldp.py", program.parent)  # installed beside it, as the engine does
    env = {
        "PATH": str(bin_dir),
        "PROVISIOND_AGENT_PYTHON": PYTHON,
        "PROVISIOND_AGENT_PROGRAM": str(program),
        "PROVISIOND_AGENT_ENV_FILE": str(env_file(tmp_path, daemon.url, uuid, token)),
        "PROVISIOND_AGENT_PIDFILE": str(tmp_path / "run" / "agent.pid"),
        "PROVISIOND_AGENT_LOGFILE": str(tmp_path / "log" / "agent.log"),
        "PROVISIOND_AGENT_ARGS": "--no-actions",
    }
    script = AGENT_DIR / "provisiond-agent.init"

    def init(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [busybox, "sh", str(script), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert init("status").returncode == 3
    pid = 0
    try:
        started = init("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((tmp_path / "run" / "agent.pid").read_text())
        assert init("status").stdout.strip() == f"provisiond-agent is running (pid {pid})"
        assert "already running" in init("start").stdout
        deadline = time.monotonic() + 20
        while stored(daemon.services, uuid).last_heartbeat_at is None:
            assert time.monotonic() < deadline, (tmp_path / "log" / "agent.log").read_text()
            time.sleep(0.2)
        stopped = init("stop")
        assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout
        assert not (tmp_path / "run" / "agent.pid").exists()
        assert init("status").returncode == 3
        log = (tmp_path / "log" / "agent.log").read_text()
        assert "heartbeat accepted; machine is active" in log
        assert stored(daemon.services, uuid).cpus == os.cpu_count()
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)
    # A bad env file: start says so instead of "started".
    (tmp_path / "agent.env").write_text("PROVISIOND_URL=http://127.0.0.1:1\n")
    failed = init("start")
    assert failed.returncode == 1 and "exited at start" in failed.stderr
    assert "missing PROVISIOND_MACHINE" in failed.stderr


def test_the_systemd_unit_runs_the_installed_agent() -> None:
    unit = (AGENT_DIR / "provisiond-agent.service").read_text()
    exec_start = (
        "ExecStart=/usr/bin/python3 /opt/provisiond-agent/agent.py "
        "--env-file /etc/provisiond/agent.env"
    )
    assert exec_start in unit.splitlines() and "Restart=always" in unit.splitlines()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        [analyze, "verify", str(AGENT_DIR / "provisiond-agent.service")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and "provisiond-agent.service" not in done.stderr, done.stderr
    mode = (AGENT_DIR / "provisiond-agent.init").stat().st_mode
    assert mode & stat.S_IXUSR, "the init script must be executable"
