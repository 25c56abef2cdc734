"""One DHCP holder per provisioning network, across daemons on one PostgreSQL.

Two "daemons" (a ClusterNode, a DnsmasqService and a DhcpHolder each, on their own
asyncio loop thread, with their own state folder) serve the same network: one
bridge in a namespace this test creates, a busybox udhcpc client in another.
Every dnsmasq is a real child; leases go through the real lease hook into the real
``dhcplease`` table; a hung event loop is a real ``time.sleep`` on that loop and a
dead database is a real PostgreSQL cluster stopped with pg_ctl.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from provisiond.cluster.members import Me
from provisiond.cluster.node import ClusterNode
from provisiond.db import SCHEMA_HEAD, Database
from provisiond.models import DhcpLease
from provisiond.netboot.dhcp_holder import DhcpHolder, dhcp_role
from provisiond.netboot.dnsmasq import DnsmasqService
from provisiond.templates import Templates
from tests.conftest import _database
from tests.integration.test_dnsmasq import LoopThread, full_net, wait_for
from tests.support import pg
from tests.support.daemon import Daemon as Daemon_
from tests.support.netns import SUBNET, Lab

pytestmark = pytest.mark.slow

TTL_S = 3.0
MAC = "52:54:00:aa:16:01"


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from _database("postgres", request, tmp_path)


@dataclass
class Daemon:
    name: str
    loop: LoopThread
    node: ClusterNode
    service: DnsmasqService
    holder: DhcpHolder

    @property
    def pid(self) -> int | None:
        return self.service.supervisor.pid


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.split(") ", 1)[-1].startswith(("Z", "X"))


class Daemons:
    """Builds daemons and tears every one down (dnsmasq stopped by its supervisor, by PID)."""

    def __init__(self, lab: Lab, db: Database, ns: str) -> None:
        self.lab, self.db, self.ns = lab, db, ns
        self.all: list[Daemon] = []

    def add(self, name: str, db: Database | None = None) -> Daemon:
        db = db or self.db
        loop = LoopThread()
        me = Me(id=f"test-{name}", host="test", pid=os.getpid(), version="t",
                schema_revision=SCHEMA_HEAD)  # fmt: skip
        node = ClusterNode(db, me, heartbeat_s=1.0, dead_after_s=120.0, leader_ttl_s=TTL_S,
                           drain_timeout_s=1.0)  # fmt: skip
        service = DnsmasqService(full_net(self.ns), self.lab.tmp / name, Templates(),
                                 backoff=(0.2, 0.5))  # fmt: skip

        def resync() -> None:
            with db.read_session() as session:
                service.sync(session)

        holder = DhcpHolder(service, db, node, resync=resync)
        daemon = Daemon(name, loop, node, service, holder)
        self.all.append(daemon)
        loop.run(node.start())
        node.on_lost.append(holder.lost)
        loop.run(holder.start())
        return daemon

    def close(self) -> None:
        for d in self.all:
            with contextlib.suppress(Exception):
                d.loop.run(d.holder.close(resign=False), timeout=20)
            with contextlib.suppress(Exception):
                d.loop.run(d.service.stop(), timeout=20)
            d.holder.deadman.close()
            d.loop.close()


class Watch(threading.Thread):
    """Samples every daemon's dnsmasq PID every 20 ms: the most ever alive at once."""

    def __init__(self, daemons: Daemons) -> None:
        super().__init__(daemon=True)
        self.daemons = daemons
        self.most = 0
        self.seen: set[int] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            pids = [d.pid for d in self.daemons.all]
            alive = [p for p in pids if _alive(p)]
            self.seen.update(p for p in alive if p is not None)
            self.most = max(self.most, len(alive))


@pytest.fixture
def daemons(lab: Lab, pg_db: Database) -> Iterator[Daemons]:
    server, _client = lab.pair(client_mac=MAC)
    group = Daemons(lab, pg_db, server)
    try:
        yield group
    finally:
        group.close()


def _client_ns(lab: Lab) -> str:
    return next(ns for ns in lab.namespaces if ns.endswith("-cli"))


def _lease(db: Database) -> DhcpLease | None:
    with db.read_session() as session:
        return session.exec(select(DhcpLease).where(DhcpLease.mac == MAC)).first()


def test_one_holder_serves_and_a_hung_holder_is_taken_over_with_the_same_address(
    lab: Lab, daemons: Daemons
) -> None:
    a = daemons.add("a")
    assert wait_for(lambda: _alive(a.pid) and a.service.supervisor.healthy, 10)
    watch = Watch(daemons)
    watch.start()
    try:
        b = daemons.add("b")
        time.sleep(TTL_S)  # several rounds of b trying: it must stay standby
        assert b.pid is None and not b.holder.holding
        assert a.holder.holding and _alive(a.pid)

        first = lab.udhcpc(_client_ns(lab))
        assert first["serverid"] == f"{SUBNET}.1"
        ip = first["ip"]
        assert wait_for(lambda: (lease := _lease(daemons.db)) is not None and lease.ip == ip, 5), (
            "\n".join(a.service.supervisor.tail)
        )
        lease = _lease(daemons.db)
        assert lease is not None and lease.updated_by == a.node.holder
        assert lease.expires_at is not None

        # a's event loop hangs (a real sleep on it): no renewal, no supervisor. Only
        # its dead-man thread can stop its dnsmasq.
        old_pid = a.pid
        hung = time.monotonic()
        a.loop.loop.call_soon_threadsafe(time.sleep, 3 * TTL_S)
        assert wait_for(lambda: not _alive(old_pid), TTL_S + 3)
        killed_after = time.monotonic() - hung
        assert a.holder.deadman.fired == 1
        limit = TTL_S + b.holder.grace_s + TTL_S / 3 + 5  # + dnsmasq's start
        assert wait_for(lambda: _alive(b.pid) and b.service.supervisor.healthy, limit)
        taken_after = time.monotonic() - hung
        print(f"\ndead-man killed a's dnsmasq after {killed_after:.2f}s; "
              f"b serving after {taken_after:.2f}s")  # fmt: skip
        assert b.holder.holding

        again = lab.udhcpc(_client_ns(lab))
        assert again["serverid"] == f"{SUBNET}.1"
        assert again["ip"] == ip  # from the dhcplease table through the init hook
        assert wait_for(lambda: (row := _lease(daemons.db)) is not None
                        and row.updated_by == b.node.holder, 5)  # fmt: skip

        # a's loop wakes up: its supervisor must not restart dnsmasq, its next round
        # finds b holding the role.
        time.sleep(3 * TTL_S - (time.monotonic() - hung) + TTL_S)
        assert a.pid is None and not a.holder.holding
        assert _alive(b.pid)
    finally:
        watch.halt.set()
        watch.join(2)
    assert watch.most == 1, f"{watch.most} dnsmasq answered at once"
    assert len(watch.seen) == 2


def test_resign_at_stop_hands_over_without_waiting_for_expiry(lab: Lab, daemons: Daemons) -> None:
    a = daemons.add("a")
    assert wait_for(lambda: _alive(a.pid), 10)
    b = daemons.add("b")
    ip = lab.udhcpc(_client_ns(lab))["ip"]
    assert wait_for(lambda: _lease(daemons.db) is not None, 5)
    stopped = time.monotonic()
    a.loop.run(a.holder.close())  # stop: dnsmasq first, then the role handed back
    assert a.pid is None
    assert wait_for(lambda: _alive(b.pid) and b.service.supervisor.healthy, TTL_S / 3 + 6)
    print(f"\nb serving {time.monotonic() - stopped:.2f}s after a resigned")
    assert lab.udhcpc(_client_ns(lab))["ip"] == ip


def test_dead_man_stops_dnsmasq_when_the_database_is_gone(lab: Lab) -> None:
    if not pg.available():
        pytest.skip("PostgreSQL 15 is not installed")
    server, _client = lab.pair(client_mac=MAC)
    cluster = pg.start_cluster()
    db = Database(cluster.url())
    daemons = Daemons(lab, db, server)
    try:
        db.upgrade()
        a = daemons.add("a")
        assert wait_for(lambda: _alive(a.pid) and a.service.supervisor.healthy, 10)
        with db.read_session() as session:
            from provisiond.models import Leadership

            assert session.get(Leadership, dhcp_role("t")) is not None
        pid = a.pid
        gone = time.monotonic()
        db.dispose()
        cluster.stop()  # pg_ctl stop -m immediate: every renewal now fails
        assert wait_for(lambda: not _alive(pid), TTL_S + 3)
        print(f"\ndnsmasq stopped {time.monotonic() - gone:.2f}s after the database went")
        time.sleep(2)  # the supervisor must not have restarted it
        assert a.pid is None
    finally:
        daemons.close()
        with contextlib.suppress(Exception):
            cluster.stop()


# --- two real `provisiond serve` processes ----------------------------------------------


def _serve(root: Path, db_url: str, ns: str, http_port: int, *, user: str = "root") -> Daemon_:
    from tests.support.cluster import FAST

    root.mkdir(parents=True)
    config = root / "provisiond.toml"
    config.write_text(
        "[[networks]]\n"
        f'name = "t"\ninterface = "br0"\nnetns = "{ns}"\nsubnet = "{SUBNET}.0/24"\n'
        f'boot_address = "{SUBNET}.1"\nhttp_port = {http_port}\ndhcp_mode = "full"\n'
        f'range_start = "{SUBNET}.100"\nrange_end = "{SUBNET}.150"\n'
        + (f'dnsmasq_user = "{user}"\n' if user else "")
    )
    env = {"PROVISIOND_DATABASE_URL": db_url, "PROVISIOND_CONFIG": str(config), **FAST}
    return Daemon_(data_dir=root / "data", extra_env=env)


def _ppid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))


def _dnsmasq_of(daemon: Daemon_) -> int | None:
    """The daemon's running dnsmasq, a child of its guard (pidfile checked against /proc)."""
    if daemon.proc is None:
        return None
    root = daemon.data_dir.resolve() / "dnsmasq" / "t"
    try:
        guard, *rest = (int(x) for x in (root / "dnsmasq.pid").read_text().split())
    except (OSError, ValueError):
        return None
    if _ppid(guard) != daemon.proc.pid:
        return None
    for pid in rest:
        with contextlib.suppress(OSError):
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if b"dnsmasq" in argv0 and _ppid(pid) == guard and _alive(pid):
                return pid
    return None


def _all_dnsmasq(under: Path) -> list[int]:
    """Every live dnsmasq server whose config is under ``under`` (a /proc scan)."""
    mark = f"--conf-file={under.resolve()}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            ours = argv[0].endswith(b"/dnsmasq") and any(a.startswith(mark) for a in argv)
            if ours and _alive(int(entry.name)):
                out.append(int(entry.name))
    # dnsmasq forks a helper for --dhcp-script (same command line, root, no DHCP socket):
    # the server is the one whose parent is a guard
    return [pid for pid in out if _is_guard(_ppid(pid))]


def _is_guard(pid: int | None) -> bool:
    try:
        return b"dhcp_guard.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_two_serve_processes_one_dnsmasq_and_a_killed_holder_is_replaced(
    lab: Lab, pg_db: Database, tmp_path: Path
) -> None:
    server, client = lab.pair(client_mac=MAC)
    a = _serve(tmp_path / "a", pg_db.url, server, 18080)
    b = _serve(tmp_path / "b", pg_db.url, server, 18081)
    for d in (a, b):
        d.data_dir.mkdir(parents=True)
    seen: set[int] = set()
    try:
        a.start(timeout=30)
        pid_a = _wait_pid(a, 15)
        seen.add(pid_a)
        b.start(timeout=30)
        time.sleep(TTL_S)
        assert _dnsmasq_of(b) is None, "the standby daemon runs a dnsmasq"
        assert httpx.get(b.url + "/healthz", timeout=5).status_code == 200
        ip = lab.udhcpc(client)["ip"]
        assert wait_for(lambda: (row := _lease(pg_db)) is not None and row.ip == ip, 5)

        killed = time.monotonic()
        a.stop(signal.SIGKILL)  # no resign: b waits for the expiry and the grace
        assert wait_for(lambda: not _alive(pid_a), 3)  # PR_SET_PDEATHSIG
        pid_b = _wait_pid(b, TTL_S + 2 + TTL_S / 3 + 8)
        seen.add(pid_b)
        print(f"\nb's dnsmasq up {time.monotonic() - killed:.2f}s after a was SIGKILLed")
        assert lab.udhcpc(client)["ip"] == ip

        b.stop()
        assert not _alive(pid_b)
        with pg_db.read_session() as session:
            from provisiond.models import Leadership

            row = session.get(Leadership, dhcp_role("t"))
            assert row is not None and row.holder is None  # resigned at the stop
    finally:
        for d in (a, b):
            if d.proc is not None:
                d.stop(signal.SIGKILL)
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _wait_pid(daemon: Daemon_, timeout: float) -> int:
    """The daemon's dnsmasq once it is serving (its "started" line was logged)."""

    def serving() -> bool:
        return _dnsmasq_of(daemon) is not None and '"dnsmasq started"' in daemon.log_text()

    assert wait_for(serving, timeout), daemon.log_text()[-3000:]
    pid = _dnsmasq_of(daemon)
    assert pid is not None
    return pid


# --- the lease hook and the daemon's sink, without dnsmasq -------------------------------


def test_lease_hook_socket_fallback_fence_and_init(pg_db: Database, tmp_path: Path) -> None:
    import subprocess

    from provisiond.cluster import leadership
    from provisiond.netboot import lease_hook
    from provisiond.netboot.lease_sink import LeaseSink
    from provisiond.pg_session import libpq_url

    role = dhcp_role("t")
    assert leadership.lead(pg_db, role, "x#1", 60) is not None
    sock = tmp_path / "lease.sock"
    sink = LeaseSink(pg_db, sock, network="t", role=role, holder="x#1")
    sink.start()
    hook = lease_hook.install(tmp_path, dsn=libpq_url(pg_db.url), network="t", role=role,
                              holder="x#1", socket=sock)  # fmt: skip
    env = {"DNSMASQ_LEASE_EXPIRES": "1900000000", "DNSMASQ_CLIENT_ID": "01:52:54:00:aa:16:01"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(hook), *args], capture_output=True, text=True, env=env,
                              timeout=30, check=False)  # fmt: skip

    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert run("add", MAC, f"{SUBNET}.120", "m1").returncode == 0
        assert sink.written == 1
        assert run("tftp", "100", f"{SUBNET}.120", "/x").returncode == 0  # ignored
        # dnsmasq gave .120 to another MAC: the old row for that address goes
        assert run("old", "52:54:00:aa:16:02", f"{SUBNET}.120").returncode == 0
    finally:
        sink.close()
    assert run("add", MAC, f"{SUBNET}.121", "m1").returncode == 0  # no sink: psycopg
    init = run("init")
    assert init.returncode == 0, init.stderr
    assert sorted(init.stdout.splitlines()) == [
        f"1900000000 52:54:00:aa:16:01 {SUBNET}.121 m1 01:52:54:00:aa:16:01",
        f"1900000000 52:54:00:aa:16:02 {SUBNET}.120 * 01:52:54:00:aa:16:01",
    ]
    assert run("del", MAC, f"{SUBNET}.121").returncode == 0
    # fenced: once the role is another holder's, this holder's writes change nothing
    assert leadership.resign(pg_db, role, "x#1")
    assert run("add", "52:54:00:aa:16:03", f"{SUBNET}.122").returncode == 0
    assert run("init").stdout.splitlines() == [
        f"1900000000 52:54:00:aa:16:02 {SUBNET}.120 * 01:52:54:00:aa:16:01"
    ]


# --- the guard process (dhcp_guard.py) over a stand-in child ------------------------------


def _guard(lease_s: float) -> tuple[subprocess.Popen[bytes], int]:
    import sys

    from provisiond.netboot import dhcp_guard

    cmd = dhcp_guard.command(sys.executable, lease_s, ["sleep", "60"])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # "dhcp-guard: child <pid>"
    assert line.startswith("dhcp-guard: child "), line
    return proc, int(line.split()[-1])


def _timed_exit(proc: subprocess.Popen[bytes], child: int, limit: float) -> tuple[int, float]:
    started = time.monotonic()
    code = proc.wait(limit)
    assert wait_for(lambda: not _alive(child), 0.5)
    return code, time.monotonic() - started


def test_guard_stops_its_child_on_eof_expiry_and_signal() -> None:
    from provisiond.netboot.dhcp_guard import EXIT_EXPIRED, EXIT_ORPHANED

    procs: list[subprocess.Popen[bytes]] = []
    children: list[int] = []
    try:
        # stdin closed (the daemon died): the child goes at once
        proc, child = _guard(60)
        procs.append(proc), children.append(child)
        assert proc.stdin is not None
        proc.stdin.close()
        code, took = _timed_exit(proc, child, 3)
        assert code == EXIT_ORPHANED and took < 2

        # extended every 0.3 s for 2 s: alive past its 0.8 s lease; then no renewal
        proc, child = _guard(0.8)
        procs.append(proc), children.append(child)
        assert proc.stdin is not None
        for _ in range(7):
            proc.stdin.write(b"0.8\n")
            proc.stdin.flush()
            time.sleep(0.3)
            assert proc.poll() is None and _alive(child)
        code, took = _timed_exit(proc, child, 3)  # unrenewed, stdin still open
        assert code == EXIT_EXPIRED and took < 1.5

        # SIGTERM to the guard is forwarded: the child ends by it, then the guard
        proc, child = _guard(60)
        procs.append(proc), children.append(child)
        proc.send_signal(signal.SIGTERM)
        code, took = _timed_exit(proc, child, 3)
        assert code == 128 + signal.SIGTERM and took < 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)


# --- dnsmasq dropping to nobody, holder SIGSTOPped and SIGKILLed ---------------------------


class ProcWatch(threading.Thread):
    """Every 20 ms: how many dnsmasq processes with a config under ``root`` are alive."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.most, self.seen = root, 0, set[int]()
        self.worst: list[tuple[int, int | None]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            alive = _all_dnsmasq(self.root)
            self.seen.update(alive)
            if len(alive) > self.most:
                self.most, self.worst = len(alive), [(p, _ppid(p)) for p in alive]


def test_nobody_dnsmasq_stops_with_a_stopped_or_killed_holder(
    lab: Lab, pg_db: Database, tmp_path: Path
) -> None:
    import shutil
    import tempfile

    server, client = lab.pair(client_mac=MAC)
    # dnsmasq as nobody reads its hosts folder and TFTP root: pytest's tmp_path (under
    # a 0700 folder) is not reachable for it, a fresh 0755 folder in /tmp is.
    tmp_path = Path(tempfile.mkdtemp(prefix="provisiond-nobody-"))
    tmp_path.chmod(0o755)
    a = _serve(tmp_path / "a", pg_db.url, server, 18082, user="")  # dnsmasq's default: nobody
    b = _serve(tmp_path / "b", pg_db.url, server, 18083, user="")
    for d in (a, b):
        d.data_dir.mkdir(parents=True)
    watch = ProcWatch(tmp_path)
    try:
        a.start(timeout=30)
        pid_a = _wait_pid(a, 15)
        assert "nobody" in _user_of(pid_a)
        b.start(timeout=30)
        watch.start()
        ip = lab.udhcpc(client)["ip"]
        assert a.proc is not None

        # a is SIGSTOPped: its guard stops its dnsmasq at the role's expiry, before b
        # (expiry + grace) starts its own
        a.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert wait_for(lambda: not _alive(pid_a), TTL_S + 1), "a's dnsmasq outlived the role"
        gone_after = time.monotonic() - stopped
        pid_b = _wait_pid(b, TTL_S + 2 + TTL_S / 3 + 8)
        print(f"\na stopped: its dnsmasq gone after {gone_after:.2f}s, "
              f"b serving after {time.monotonic() - stopped:.2f}s")  # fmt: skip
        assert lab.udhcpc(client)["ip"] == ip
        a.proc.send_signal(signal.SIGCONT)
        time.sleep(2 * TTL_S)  # a's loop resumes: it must not start dnsmasq again
        assert _dnsmasq_of(a) is None and _alive(pid_b)
        assert _all_dnsmasq(tmp_path) == [pid_b]

        # b (the holder now) is SIGKILLed: its guard sees EOF / SIGTERM and stops dnsmasq
        killed = time.monotonic()
        b.stop(signal.SIGKILL)
        assert wait_for(lambda: not _alive(pid_b), 2.5), "b's dnsmasq outlived b"
        gone_after = time.monotonic() - killed
        pid_a2 = _wait_pid(a, TTL_S + 2 + TTL_S / 3 + 8)
        print(f"b killed: its dnsmasq gone after {gone_after:.2f}s, "
              f"a serving again after {time.monotonic() - killed:.2f}s")  # fmt: skip
        assert lab.udhcpc(client)["ip"] == ip
        assert _all_dnsmasq(tmp_path) == [pid_a2]
    finally:
        watch.halt.set()
        if watch.is_alive():
            watch.join(2)
        for d in (a, b):
            if d.proc is not None:
                with contextlib.suppress(OSError):
                    d.proc.send_signal(signal.SIGCONT)
                d.stop(signal.SIGKILL)
        for pid in watch.seen:  # only dnsmasqs of this test's own configs
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert watch.most == 1, f"{watch.most} dnsmasq answered at once: {watch.worst}"
    assert len(watch.seen) == 3


def _user_of(pid: int) -> str:
    import pwd

    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("Uid:"))
    return pwd.getpwuid(uid).pw_name
