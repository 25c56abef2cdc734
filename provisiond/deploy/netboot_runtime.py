"""The daemon's network-boot runtime: one supervised dnsmasq per provisioning network.

Started and stopped by :func:`provisiond.daemon.serve`. It

- re-renders every network's hosts folder from the DB once at start-up, then starts
  dnsmasq (restarted with backoff by its supervisor when it dies);
- applies one machine's host file when that machine or its NICs change
  (:meth:`Netboot.hosts_changed`, called by the machine and inventory services after
  commit): one file written, no restart, no SIGHUP;
- turns dnsmasq's ``--log-dhcp`` lines into boot phases of the machine's running
  deployment (:mod:`provisiond.deploy.telemetry`), and records the address a
  DHCPACK gave to a known NIC that has none yet (a server-side fact, unlike anything
  a boot request claims);
- reports each dnsmasq's health for ``/healthz`` and the ``provisiond_dnsmasq_up`` gauge.

On PostgreSQL (several daemons), a network with DHCP (``full`` or ``proxy``) has one
holder: only the daemon holding its ``dhcp:<network>`` role runs its dnsmasq, with
leases kept in the database (:mod:`provisiond.netboot.dhcp_holder`). On SQLite, and
for DHCP ``off`` (TFTP only), every network's dnsmasq runs as always.

DB writes from log lines run on a worker thread fed by a bounded queue, so a DHCP
storm can never block the event loop; when the queue is full, events are dropped
and counted (telemetry is best effort; leases are dnsmasq's business).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlmodel import Session, select

from provisiond.deploy import telemetry as boot_telemetry
from provisiond.logging import get_logger
from provisiond.models import Machine, Nic
from provisiond.netboot.dhcp_holder import DhcpHolder
from provisiond.netboot.dnsmasq import (
    BootEvent,
    DhcpEvent,
    DnsmasqService,
    HostChange,
    ProvisioningNetwork,
    TftpEvent,
    host_entries,
)
from provisiond.templates import Templates

if TYPE_CHECKING:
    from provisiond.cluster.node import ClusterNode
    from provisiond.container import Services

log = get_logger(__name__)

QUEUE_MAX = 10_000
#: iPXE binaries dnsmasq sends over TFTP; anything else is not a boot phase.
_TFTP_PHASE = {"undionly.kpxe": "tftp", "ipxe.efi": "tftp", "snponly.efi": "tftp"}


class Netboot:
    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.networks: list[ProvisioningNetwork] = list(settings.networks)
        self._templates = Templates(settings.templates_dir)
        self._queue: asyncio.Queue[BootEvent] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.dropped = 0
        self.dnsmasq: dict[str, DnsmasqService] = {
            net.name: DnsmasqService(
                net, settings.data_dir, self._templates, on_event=self._on_event
            )
            for net in self.networks
        }
        #: network -> its DHCP holder (PostgreSQL, DHCP full or proxy only).
        self.holders: dict[str, DhcpHolder] = {}

    async def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_MAX)
        self._consumer = asyncio.create_task(self._consume())
        node = self._cluster_node()
        for service in self.dnsmasq.values():
            changes = await asyncio.to_thread(self._sync, service)
            log.info("dnsmasq_hosts_synced", network=service.net.name, changes=changes)
            if node is None or service.net.dhcp_mode == "off":
                await service.start()
                continue
            holder = DhcpHolder(
                service,
                self.services.db,
                node,
                resync=lambda s=service: self._sync(s),  # type: ignore[misc]
            )
            self.holders[service.net.name] = holder
            node.on_lost.append(holder.lost)
            await holder.start()

    def _cluster_node(self) -> ClusterNode | None:
        """This daemon's ClusterNode when it shares PostgreSQL with others, else None."""
        from provisiond.cluster.node import ClusterNode

        node = getattr(self.services, "cluster", None)
        if isinstance(node, ClusterNode) and not node.solo:
            return node
        return None

    def _sync(self, service: DnsmasqService) -> dict[str, int]:
        with self.services.db.read_session() as session:
            return {k.value: v for k, v in service.sync(session).items()}

    def resync(self) -> dict[str, dict[str, int]]:
        """Re-render every network's host files from the DB (blocking: run it in a
        thread). The scheduler calls it periodically, so a host file that a failed
        after-commit hook (or a change made by another daemon) left stale is put right;
        a resync that changes anything says so in the log."""
        out: dict[str, dict[str, int]] = {}
        for name, service in self.dnsmasq.items():
            changes = self._sync(service)
            out[name] = changes
            if any(n for kind, n in changes.items() if kind != HostChange.UNCHANGED.value):
                log.warning("dnsmasq_hosts_resynced", network=name, changes=changes)
        return out

    async def stop(self) -> None:
        for holder in self.holders.values():  # dnsmasq stopped, then the role handed back
            await holder.close()
        for service in self.dnsmasq.values():
            await service.stop()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer

    def health(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, service in self.dnsmasq.items():
            sup = service.supervisor
            up = sup.healthy and sup.pid is not None
            self.services.metrics.dnsmasq_up.labels(name).set(1 if up else 0)
            holder = self.holders.get(name)
            if holder is not None and not holder.running:
                out[f"dnsmasq:{name}"] = "ok"  # standby: another daemon holds its DHCP
                continue
            out[f"dnsmasq:{name}"] = "ok" if up else f"down: {sup.reason}"
        return out

    def hosts_changed(self, names: Iterable[str], removed: Iterable[str] = ()) -> int:
        """Write (or remove) the host file of each named machine; returns files touched."""
        wanted = set(names)
        gone = set(removed)
        if not self.dnsmasq or not (wanted or gone):
            return 0
        touched = 0
        with self.services.db.read_session() as session:
            for service in self.dnsmasq.values():
                entries = (
                    {e.name: e for e in host_entries(session, service.net, names=wanted)}
                    if wanted
                    else {}
                )
                for name in wanted | gone:
                    entry = entries.get(name)
                    change = (
                        service.apply_host(entry.name, entry.macs, entry.ip)
                        if entry is not None
                        else service.remove_host(name)
                    )
                    touched += change is not HostChange.UNCHANGED
        return touched

    # --- dnsmasq log -> boot phases -------------------------------------------------

    def _on_event(self, event: BootEvent) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                await asyncio.to_thread(self.apply_event, event)
            except Exception:  # telemetry must never stop the daemon; logged, next
                log.exception("boot_event_failed", event=repr(event))

    def apply_event(self, event: BootEvent) -> None:
        metrics = self.services.metrics
        with self.services.db.transaction() as session:
            if isinstance(event, DhcpEvent):
                machine = boot_telemetry.machine_by_mac(session, event.mac)
                if machine is None:
                    return
                if event.kind == "ack" and event.ip:
                    _learn_address(session, event.mac, event.ip)
                phase = _dhcp_phase(event)
                if phase:
                    boot_telemetry.record_phase(
                        session,
                        machine,
                        phase,
                        metrics=metrics,
                        actor="dnsmasq",
                        mac=event.mac,
                        ip=event.ip,
                        boot_file=event.boot_file,
                    )
            elif isinstance(event, TftpEvent) and event.ok and event.ip:
                phase = _TFTP_PHASE.get(event.file)
                if phase:
                    machine = boot_telemetry.machine_by_address(session, event.ip)
                    boot_telemetry.record_phase(
                        session, machine, phase, metrics=metrics, actor="dnsmasq", file=event.file
                    )


def _dhcp_phase(event: DhcpEvent) -> str | None:
    if event.is_ipxe:
        return "ipxe_dhcp" if event.kind == "ack" else None
    if not event.is_pxe:  # the booted OS's own DHCP client
        return "os_dhcp" if event.kind == "ack" else None
    if event.kind == "discover":
        return "dhcp_discover"
    if event.kind == "ack":
        return "dhcp_ack"
    if event.kind == "proxy":
        return "dhcp_proxy"
    return None


def _learn_address(session: Session, mac: str, ip: str) -> None:
    nic = session.exec(select(Nic).where(Nic.mac == mac)).first()
    if nic is not None and not nic.ip_address:
        nic.ip_address = ip
        session.add(nic)
        machine = session.get(Machine, nic.machine_id)
        log.info("nic_address_learnt", machine=machine.name if machine else None, mac=mac, ip=ip)
