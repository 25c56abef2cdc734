"""Provisioning networks, dnsmasq's rendered config, its TFTP root and per-machine host files.

One :class:`ProvisioningNetwork` gets one dnsmasq with its own state folder
(:class:`DnsmasqPaths`): ``dnsmasq.conf``, ``hosts/`` (dnsmasq's ``dhcp-hostsdir``),
``tftp/`` (only the iPXE binaries) and ``leases``.

Host files: each known machine has one file in ``hosts/`` holding one line
``<mac>[,<mac>...][,<ip>],set:provisiond,<hostname>``. A new file is picked up by
dnsmasq through inotify, with no restart and no SIGHUP. dnsmasq never forgets a
record it read: a *changed* file adds a newer record, which wins (measured with
2.90: .20 -> .21 -> .22 handed out in turn); a *removed* file's record lingers until
dnsmasq restarts. SIGHUP would drop them, but 2.90 crashes on SIGHUP once a
hostsdir record has a lease, so provisiond never sends one.

DHCP mode ``off`` (the site's DHCP server does DHCP, dnsmasq serves TFTP only).
Point the site server at the daemon with these values::

    next-server / option 66 (TFTP server)  <boot_address>
    option 67 (boot file), client arch 0 (BIOS)          undionly.kpxe
    option 67, client arch 7 or 9 (x86-64 UEFI)          snponly.efi  (or ipxe.efi)
    option 67 for iPXE (option 175 present or user class "iPXE")
                                           http://<boot_address>:<http_port>/boot/ipxe

In ISC dhcpd terms: ``if exists user-class and option user-class = "iPXE" {
filename "http://.../boot/ipxe"; } elsif option arch = 00:07 { filename
"snponly.efi"; } else { filename "undionly.kpxe"; }`` plus ``next-server <boot_address>``.
Without the iPXE branch the client loops: iPXE would load undionly.kpxe again.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address
from pathlib import Path

from provisiond.errors import ConfigError
from provisiond.networks import ProvisioningNetwork
from provisiond.templates import Templates

#: Where Debian's ``ipxe`` package puts its binaries.
IPXE_DIR = Path("/usr/lib/ipxe")
#: The only files the TFTP root holds.
IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
HOST_TAG = "provisiond"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class DnsmasqPaths:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def tftp(self) -> Path:
        return self.root / "tftp"

    @property
    def leases(self) -> Path:
        return self.root / "leases"

    @classmethod
    def for_network(cls, data_dir: Path, net: ProvisioningNetwork) -> DnsmasqPaths:
        return cls(data_dir.resolve() / "dnsmasq" / net.name)

    def create(self) -> None:
        # dnsmasq may run as nobody: it must reach these folders (from <data_dir>/dnsmasq
        # down; the data folder itself needs o+x, as the systemd unit's 0711 gives it).
        for folder in (self.root.parent, self.root, self.hosts, self.tftp):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)


def render_config(templates: Templates, net: ProvisioningNetwork, paths: DnsmasqPaths) -> str:
    return templates.render("dnsmasq.conf.j2", net=net, paths=paths, boot_url=net.boot_url)


def write_config(templates: Templates, net: ProvisioningNetwork, paths: DnsmasqPaths) -> Path:
    paths.create()
    _atomic_write(paths.conf, render_config(templates, net, paths))
    return paths.conf


def prepare_tftp_root(tftp: Path, source: Path = IPXE_DIR) -> list[Path]:
    """Copy the iPXE binaries (world-readable, as tftp-secure wants when run as root)."""
    missing = [name for name in IPXE_FILES if not (source / name).is_file()]
    if missing:
        raise ConfigError(
            f"iPXE binaries missing from {source}: {', '.join(missing)}",
            hint="apt-get install ipxe",
        )
    tftp.mkdir(parents=True, exist_ok=True)
    out = []
    for name in IPXE_FILES:
        src, dst = source / name, tftp / name
        st = src.stat()
        if (
            not dst.is_file()
            or dst.stat().st_size != st.st_size
            or dst.stat().st_mtime < st.st_mtime
        ):
            tmp = tftp / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, dst)
        out.append(dst)
    for extra in tftp.iterdir():  # the root holds only the iPXE binaries
        if extra.name not in IPXE_FILES:
            if extra.is_dir() and not extra.is_symlink():
                shutil.rmtree(extra)
            else:
                extra.unlink()
    return out


class HostChange(Enum):
    ADDED = "added"  # dnsmasq reads it through inotify
    CHANGED = "changed"  # re-read through inotify; the newest record wins
    UNCHANGED = "unchanged"
    REMOVED = "removed"  # dnsmasq keeps the record in memory until it restarts


@dataclass(frozen=True)
class HostEntry:
    name: str
    macs: tuple[str, ...]
    ip: str | None = None


def host_filename(name: str) -> str:
    """A safe, stable file name for a machine (dnsmasq skips names starting with '.')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"
    return safe[:200]


def _hostname(name: str) -> str:
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "machine"


def host_line(name: str, macs: Sequence[str], ip: str | None) -> str:
    cleaned = []
    for mac in macs:
        mac = mac.strip().lower().replace("-", ":")
        if not _MAC.match(mac):
            raise ValueError(f"not a MAC address: {mac!r}")
        cleaned.append(mac)
    if not cleaned:
        raise ValueError(f"machine {name!r} has no MAC address")
    fields = [*cleaned]
    if ip:
        fields.append(str(IPv4Address(ip)))
    fields += [f"set:{HOST_TAG}", _hostname(name)]
    return ",".join(fields) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


class HostsDir:
    """dnsmasq's ``dhcp-hostsdir``: one file per machine, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_host(self, name: str, macs: Sequence[str], ip: str | None = None) -> HostChange:
        text = host_line(name, macs, ip)
        target = self.path / host_filename(name)
        try:
            old: str | None = target.read_text()
        except FileNotFoundError:
            old = None
        if old == text:
            return HostChange.UNCHANGED
        _atomic_write(target, text)
        return HostChange.ADDED if old is None else HostChange.CHANGED

    def remove_host(self, name: str) -> HostChange:
        try:
            (self.path / host_filename(name)).unlink()
        except FileNotFoundError:
            return HostChange.UNCHANGED
        return HostChange.REMOVED

    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if not p.name.startswith(".")}

    def sync(self, entries: Iterable[HostEntry]) -> dict[HostChange, int]:
        """Full re-render: write every entry, delete files of machines no longer listed."""
        self.path.mkdir(parents=True, exist_ok=True)
        counts = dict.fromkeys(HostChange, 0)
        keep = set()
        for entry in entries:
            keep.add(host_filename(entry.name))
            counts[self.write_host(entry.name, entry.macs, entry.ip)] += 1
        for stale in self.names() - keep:
            (self.path / stale).unlink(missing_ok=True)
            counts[HostChange.REMOVED] += 1
        return counts
