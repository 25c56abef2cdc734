"""dnsmasq ``--log-dhcp`` lines (``log-facility=-``) into boot-phase events.

Pure: text in, small dataclasses out; no sockets, no clock. Lines look like::

    dnsmasq-dhcp[25536]: 231557997 vendor class: PXEClient:Arch:00000
    dnsmasq-dhcp[25536]: 231557997 DHCPDISCOVER(br0) 52:54:00:aa:00:01
    dnsmasq-dhcp[25536]: 231557997 DHCPOFFER(br0) 10.77.1.20 52:54:00:aa:00:01
    dnsmasq-dhcp[25536]: 231557997 DHCPACK(br0) 10.77.1.20 52:54:00:aa:00:01 m1
    dnsmasq-dhcp[25536]: 231557997 sent size: 14 option: 67 bootfile-name  undionly.kpxe
    dnsmasq-dhcp[27093]: 4266403771 PXE(e0) 52:54:00:aa:00:01 proxy
    dnsmasq-dhcp[27093]: 4266403771 bootfile name: http://10.77.1.1:8080/boot/ipxe
    dnsmasq-tftp[25536]: sent /var/lib/provisiond/dnsmasq/prov0/tftp/undionly.kpxe to 10.77.1.20

:func:`parse_line` reads one line; :class:`BootLogParser` folds the per-transaction
lines (vendor class, user class, boot file) into the DHCP event they belong to.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Literal

DhcpKind = Literal[
    "discover", "offer", "request", "ack", "nak", "decline", "release", "inform", "proxy"
]

_PREFIX = r"^dnsmasq(?:-(?P<sub>dhcp|tftp))?\[(?P<pid>\d+)\]: "
_DHCP = re.compile(
    _PREFIX + r"(?:(?P<xid>\d+) )?DHCP(?P<kind>DISCOVER|OFFER|REQUEST|ACK|NAK|DECLINE|RELEASE"
    r"|INFORM)\((?P<iface>[^)]*)\)(?: (?P<ip>\d+\.\d+\.\d+\.\d+))?"
    r" (?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})(?: (?P<rest>.*))?$"
)
# proxyDHCP answering a PXE client: "<xid> PXE(e0) 52:54:00:aa:00:01 proxy".
_PROXY = re.compile(
    _PREFIX + r"(?P<xid>\d+) PXE\((?P<iface>[^)]*)\)(?: (?P<ip>\d+\.\d+\.\d+\.\d+))?"
    r" (?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5}) (?P<rest>.*)$"
)
_CLASS = re.compile(_PREFIX + r"(?P<xid>\d+) (?P<which>vendor|user) class: (?P<value>.*)$")
_BOOTFILE = re.compile(
    _PREFIX + r"(?P<xid>\d+) (?:sent size: *\d+ option: *67 bootfile-name +|bootfile name: )"
    r"(?P<file>\S+)"
)
_TFTP_SENT = re.compile(_PREFIX + r"sent (?P<path>\S+) to (?P<ip>[0-9a-fA-F.:]+)\s*$")
_TFTP_FAIL = re.compile(
    _PREFIX + r"(?:file (?P<path>\S+) not found|failed sending (?P<path2>\S+) to "
    r"(?P<ip>[0-9a-fA-F.:]+)|(?P<other>error .*))"
)


@dataclass(frozen=True)
class DhcpEvent:
    kind: DhcpKind
    mac: str
    ip: str | None
    interface: str
    xid: int | None
    hostname: str | None = None
    vendor_class: str | None = None
    user_class: str | None = None
    #: Boot file (option 67 / file field) we sent; filled in by BootLogParser.
    boot_file: str | None = None

    #: ``PXEClient...`` vendor class or an iPXE user class: a network boot, not an OS.
    @property
    def is_pxe(self) -> bool:
        return bool(self.vendor_class and self.vendor_class.startswith("PXEClient"))

    @property
    def is_ipxe(self) -> bool:
        return self.user_class == "iPXE"


@dataclass(frozen=True)
class TftpEvent:
    file: str  # base name
    ip: str | None
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ClientClass:
    xid: int
    which: Literal["vendor", "user"]
    value: str


@dataclass(frozen=True)
class BootFile:
    xid: int
    file: str


Parsed = DhcpEvent | TftpEvent | ClientClass | BootFile
BootEvent = DhcpEvent | TftpEvent


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def parse_line(line: str) -> Parsed | None:
    """One dnsmasq log line, or None when it carries nothing a boot phase needs."""
    line = line.rstrip("\r\n")
    if not line.startswith("dnsmasq"):
        return None
    m = _DHCP.match(line)
    if m:
        rest = (m["rest"] or "").strip()
        return DhcpEvent(
            kind=m["kind"].lower(),  # type: ignore[arg-type]
            mac=m["mac"],
            ip=m["ip"],
            interface=m["iface"],
            xid=int(m["xid"]) if m["xid"] else None,
            hostname=rest.split()[0] if rest and m["kind"] == "ACK" else None,
        )
    m = _PROXY.match(line)
    if m:
        return DhcpEvent(
            kind="proxy", mac=m["mac"], ip=m["ip"], interface=m["iface"], xid=int(m["xid"])
        )
    m = _CLASS.match(line)
    if m:
        return ClientClass(int(m["xid"]), m["which"], m["value"].strip())  # type: ignore[arg-type]
    m = _BOOTFILE.match(line)
    if m:
        return BootFile(int(m["xid"]), m["file"])
    if m := _TFTP_SENT.match(line):
        return TftpEvent(file=_base(m["path"]), ip=m["ip"], ok=True)
    m = _TFTP_FAIL.match(line)
    if m and m["sub"] == "tftp":
        path = m["path"] or m["path2"] or ""
        return TftpEvent(file=_base(path), ip=m["ip"], ok=False, error=line.split(": ", 1)[1])
    return None


@dataclass
class BootLogParser:
    """Folds per-transaction detail into DHCP events; remembers at most ``max_xids``."""

    max_xids: int = 1024
    _classes: OrderedDict[int, dict[str, str]] = field(default_factory=OrderedDict)
    _pending: dict[int, DhcpEvent] = field(default_factory=dict)

    def feed(self, line: str) -> list[BootEvent]:
        """Events completed by this line. An OFFER/ACK is held until its boot file line
        (or the next transaction line) arrives, so it carries the boot file."""
        item = parse_line(line)
        if item is None:
            return []
        out: list[BootEvent] = []
        if isinstance(item, ClientClass):
            self._remember(item.xid)[item.which] = item.value
        elif isinstance(item, BootFile):
            pending = self._pending.pop(item.xid, None)
            if pending is not None:
                out.append(replace(pending, boot_file=item.file))
        elif isinstance(item, TftpEvent):
            out.extend(self.flush())
            out.append(item)
        else:
            out.extend(self.flush())
            classes = self._classes.get(item.xid, {}) if item.xid is not None else {}
            event = replace(
                item, vendor_class=classes.get("vendor"), user_class=classes.get("user")
            )
            if event.kind in ("offer", "ack", "proxy") and event.xid is not None:
                self._pending[event.xid] = event
            else:
                out.append(event)
        return out

    def flush(self) -> list[BootEvent]:
        """Held OFFER/ACK events (they had no boot file)."""
        held = list(self._pending.values())
        self._pending.clear()
        return list(held)

    def _remember(self, xid: int) -> dict[str, str]:
        if xid in self._classes:
            self._classes.move_to_end(xid)
        else:
            self._classes[xid] = {}
            while len(self._classes) > self.max_xids:
                self._classes.popitem(last=False)
        return self._classes[xid]
