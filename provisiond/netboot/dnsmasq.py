"""A supervised dnsmasq per provisioning network: DHCP (full/proxy/off), TFTP, RA.

    net = ProvisioningNetwork(name="prov0", interface="br0", subnet="10.77.1.0/24",
                              boot_address="10.77.1.1", range_start=..., range_end=...)
    service = DnsmasqService(net, settings.data_dir, Templates(settings.templates_dir),
                             on_event=handle_boot_event)
    await service.start()          # writes config + TFTP root, starts the child
    service.hosts.write_host(...)  # or service.apply_host(...): picked up by inotify
    await service.stop()

The child is ``dnsmasq --keep-in-foreground --conf-file=<rendered>`` (inside
``ip netns exec <netns>`` when the network names one; ``ip`` execs dnsmasq, so the
PID is dnsmasq's). If it exits it is restarted after 0.5, 1, 2, 4, 8, 8... s; the
delay resets once it has run for :data:`STABLE_S`. ``healthy`` is False (with a
``reason`` for /healthz) from the moment it dies until a restart logs "started".
Its stderr is parsed line by line (:mod:`provisiond.netboot.dnsmasq_log`) and each
boot event handed to ``on_event``.

Never SIGHUP it: Debian's dnsmasq 2.90 segfaults (or aborts) on SIGHUP as soon as
a ``dhcp-hostsdir`` record has an active lease (measured). Host changes need none:
a rewritten file is re-read through inotify and its newest record wins; a removed
file's record lingers in memory until the next restart.

Config, host files and DHCP ``off`` mode (option 66/67 for the site's DHCP server)
are documented in :mod:`provisiond.netboot.dnsmasq_conf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from sqlmodel import Session, col, select

from provisiond.errors import ConfigError
from provisiond.logging import get_logger
from provisiond.models.machine import Machine, Nic
from provisiond.netboot import dhcp_guard
from provisiond.netboot.dhcp_guard import die_with_parent, die_with_parent_term
from provisiond.netboot.dnsmasq_conf import (
    IPXE_DIR,
    DnsmasqPaths,
    HostChange,
    HostEntry,
    HostsDir,
    prepare_tftp_root,
    write_config,
)
from provisiond.netboot.dnsmasq_log import BootEvent, BootLogParser, DhcpEvent, TftpEvent
from provisiond.networks import ProvisioningNetwork
from provisiond.templates import Templates

__all__ = [
    "BootEvent",
    "DhcpEvent",
    "DnsmasqService",
    "DnsmasqSupervisor",
    "HostChange",
    "HostEntry",
    "HostsDir",
    "ProvisioningNetwork",
    "TftpEvent",
    "die_with_parent",
    "host_entries",
    "sync_hosts",
]

log = get_logger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
STABLE_S = 30.0
STOP_GRACE_S = 5.0
#: Held OFFER/ACK/proxy events wait this long for their boot file line (> reply delay).
IDLE_FLUSH_S = 6.0
_READY = "started, version"

EventCallback = Callable[[BootEvent], None]


class DnsmasqSupervisor:
    """Runs one dnsmasq child, restarts it with backoff, parses its stderr."""

    def __init__(
        self,
        conf: Path,
        *,
        netns: str | None = None,
        on_event: EventCallback | None = None,
        binary: str = "dnsmasq",
        name: str = "dnsmasq",
        backoff: Sequence[float] = BACKOFF_S,
        stable_s: float = STABLE_S,
        extra_args: Sequence[str] = (),
        guard_lease_s: float | None = None,
    ) -> None:
        self.conf = conf
        self.extra_args = tuple(extra_args)
        #: Not None: under :mod:`.dhcp_guard`, stopped unless :meth:`extend`-ed in time.
        self.guard_lease_s = guard_lease_s
        self._deadline: float | None = None
        self._child: int | None = None  # dnsmasq's PID under the guard
        self.netns = netns
        self.on_event = on_event
        self.binary = binary
        self.name = name
        self.backoff = tuple(backoff)
        self.stable_s = stable_s
        self.healthy = False
        self.reason = "not started"
        self.restarts = 0
        self.tail: deque[str] = deque(maxlen=50)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()
        self._renewed = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """dnsmasq's PID (under a guard: once the guard reported it), None when not running."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        return self._child if self.guard_lease_s is not None else proc.pid

    def extend(self, seconds: float) -> None:
        """Guard mode: dnsmasq may run ``seconds`` more (never blocks; a dead guard is ignored)."""
        self._deadline = time.monotonic() + seconds
        self._renewed.set()
        proc = self._proc
        stdin = proc.stdin if proc is not None and proc.returncode is None else None
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                stdin.write(f"{seconds:.3f}\n".encode())

    def command(self) -> list[str]:
        exe = shutil.which(self.binary)
        if exe is None:
            raise ConfigError(
                f"{self.binary} is not installed", hint="apt-get install dnsmasq-base"
            )
        cmd = [exe, "--keep-in-foreground", f"--conf-file={self.conf}", *self.extra_args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    async def start(self, ready_timeout: float = 10.0) -> None:
        """Start supervising; waits (bounded) for the first "started" line."""
        if self._task is not None:
            return
        self.command()  # fail fast when dnsmasq is missing
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"dnsmasq-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), ready_timeout)

    async def wait_healthy(self, timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy and self.pid is not None:
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        await self._terminate()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.healthy = False
        self.reason = "stopped"

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping:
                started = time.monotonic()
                code = await self._run_once()
                if self._stopping:
                    break
                ran = time.monotonic() - started
                failures = 0 if ran >= self.stable_s else failures + 1
                delay = self.backoff[min(max(failures - 1, 0), len(self.backoff) - 1)]
                last = self.tail[-1] if self.tail else ""
                self.healthy = False
                self.reason = f"dnsmasq exited with code {code} ({last.strip()}); restarting"
                log.warning(
                    "dnsmasq exited", network=self.name, code=code, last=last, retry_in=delay
                )
                self.restarts += 1
                await asyncio.sleep(delay)
        finally:
            await self._terminate()

    @property
    def pidfile(self) -> Path:
        return self.conf.parent / "dnsmasq.pid"

    def _kill_stale(self) -> None:
        """Kill a dnsmasq (or its guard) a crashed daemon left on this config (the port)."""
        for pid in dhcp_guard.kill_stale(self.pidfile, self.conf):
            log.warning("dnsmasq_stale_killed", network=self.name, pid=pid)

    async def _lease_left(self) -> float:
        """Guard mode: the time left; once the deadline passed, none until :meth:`extend`."""
        while (left := (self._deadline or 0) - time.monotonic()) <= 0.05:  # or stop()
            self.healthy, self.reason = False, "DHCP role not renewed; waiting"
            self._renewed.clear()
            await self._renewed.wait()
        return left

    async def _run_once(self) -> int | None:
        self.tail.clear()
        self._kill_stale()
        cmd = self.command()
        guarded = self.guard_lease_s is not None
        if guarded:
            if self._deadline is None:
                self._deadline = time.monotonic() + (self.guard_lease_s or 0.0)
            cmd = dhcp_guard.command(sys.executable, await self._lease_left(), cmd)
        self._child = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if guarded else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                # A guard handles SIGTERM (stops dnsmasq); a bare dnsmasq is killed.
                preexec_fn=die_with_parent_term if guarded else die_with_parent,
            )
        except (OSError, ConfigError) as exc:
            self.tail.append(str(exc))
            return None
        self._proc = proc
        with contextlib.suppress(OSError):
            self.pidfile.write_text(f"{proc.pid}\n")
        assert proc.stderr is not None
        parser = BootLogParser()
        while True:
            try:
                raw = await asyncio.wait_for(proc.stderr.readline(), IDLE_FLUSH_S)
            except TimeoutError:
                self._emit(parser.flush())
                continue
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            if guarded and line.startswith(dhcp_guard.PREFIX):
                self._guard_said(line[len(dhcp_guard.PREFIX) :])
                continue
            if _READY in line:
                self.healthy, self.reason = True, ""
                self._ready.set()
                log.info("dnsmasq started", network=self.name, pid=self.pid)
            self._emit(parser.feed(line))
        self._emit(parser.flush())
        self.healthy = False
        self.reason = "dnsmasq exited; restarting"  # never "down: " with no reason
        if proc.stdin is not None:  # the guard would stop dnsmasq at EOF anyway
            proc.stdin.close()
        return await proc.wait()

    def _guard_said(self, text: str) -> None:
        if text.startswith("child ") and text[6:].isdigit():
            self._child = int(text[6:])
            with contextlib.suppress(OSError), self.pidfile.open("a") as f:
                f.write(f"{self._child}\n")
        else:
            log.warning("dhcp_guard", network=self.name, said=text, pid=self._child)

    def _emit(self, events: Iterable[BootEvent]) -> None:
        if self.on_event is None:
            return
        for event in events:
            try:
                self.on_event(event)
            except Exception:
                log.exception("boot event callback failed", network=self.name)


def host_entries(
    session: Session,
    net: ProvisioningNetwork | None = None,
    *,
    names: Iterable[str] | None = None,
) -> list[HostEntry]:
    """One entry per machine with a MAC; the fixed address is the first NIC IP (in ``net``).

    One joined query (no per-machine NIC loads): 10,000 machines read in ~0.1 s.
    ``names`` limits it to those machines (one machine's change reads one machine)."""
    query = (
        select(Machine.name, Nic.mac, Nic.ip_address)
        .join(Nic, Nic.machine_id == Machine.id)  # type: ignore[arg-type]
        .order_by(Machine.id, Nic.id)  # type: ignore[arg-type]
    )
    if names is not None:
        query = query.where(col(Machine.name).in_(list(names)))
    rows = session.exec(query).all()
    macs: dict[str, list[str]] = {}
    ips: dict[str, list[str]] = {}
    for name, mac, ip in rows:
        if mac:
            macs.setdefault(name, []).append(mac)
        if ip and (net is None or _in_subnet(ip, net)):
            ips.setdefault(name, []).append(ip)
    return [
        HostEntry(name, tuple(m), ips[name][0] if name in ips else None) for name, m in macs.items()
    ]


def _in_subnet(ip: str, net: ProvisioningNetwork) -> bool:
    try:
        addr = ip_address(ip)
    except ValueError:
        return False
    return isinstance(addr, IPv4Address) and addr in net.subnet


def sync_hosts(
    session: Session, hosts: HostsDir, net: ProvisioningNetwork | None = None
) -> dict[HostChange, int]:
    """Start-up full re-render of the hosts folder from the DB."""
    return hosts.sync(host_entries(session, net))


class DnsmasqService:
    """One provisioning network: rendered config, TFTP root, hosts folder, supervisor."""

    def __init__(
        self,
        net: ProvisioningNetwork,
        data_dir: Path,
        templates: Templates,
        *,
        on_event: EventCallback | None = None,
        ipxe_dir: Path = IPXE_DIR,
        backoff: Sequence[float] = BACKOFF_S,
    ) -> None:
        self.net = net
        self.templates = templates
        self.paths = DnsmasqPaths.for_network(data_dir, net)
        self.hosts = HostsDir(self.paths.hosts)
        self.ipxe_dir = ipxe_dir
        self.supervisor = DnsmasqSupervisor(
            self.paths.conf,
            netns=net.netns,
            on_event=on_event,
            name=net.name,
            backoff=backoff,
            extra_args=dhcp_guard.keep_credentials(net.dnsmasq_user),
        )

    def prepare(self) -> None:
        write_config(self.templates, self.net, self.paths)
        prepare_tftp_root(self.paths.tftp, self.ipxe_dir)

    async def start(self) -> None:
        self.prepare()
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()

    def apply_host(self, name: str, macs: Sequence[str], ip: str | None) -> HostChange:
        """Write one machine's file; dnsmasq reads it through inotify (never a SIGHUP)."""
        return self.hosts.write_host(name, macs, ip)

    def remove_host(self, name: str) -> HostChange:
        return self.hosts.remove_host(name)

    def sync(self, session: Session) -> dict[HostChange, int]:
        return sync_hosts(session, self.hosts, self.net)
