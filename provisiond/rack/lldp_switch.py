"""The virtual rack's top-of-rack switch, as LLDP shows it to the guests.

The rack's inventory (:func:`provisiond.rack.vrack_files.inventory_yaml`) plans guest K's
cabled NIC on port ``swpK`` of switch ``<rack>-sw1``. :class:`Speaker` makes that
physical: inside the rack's namespace it writes an LLDP frame on every guest's tap each
``interval_s`` (default 2 s): chassis id the switch's MAC (:func:`switch_chassis_mac`,
locally administered, the same for every rack of that name), system name the switch's
name, management address the bridge's boot address, port id ``swpK`` (interface name
subtype) with the port's description (the guest the port is planned for).

A frame written on a tap from the namespace side goes straight to the guest's NIC; the
bridge is not involved (and would drop 01:80:c2:00:00:0e unless its ``group_fwd_mask``
let it through). A tap whose guest is off drops the frame, which costs nothing.

Fault: ``swap_cables=["vm1", "vm2"]`` (``provisiond rack up --swap-cables vm1,vm2``)
announces vm1's planned port on vm2's tap and vm2's on vm1's, as if the two cables were
swapped at the switch.

The speaker runs as a thread of the rack's BMC farm process (``vrack serve-bmcs``), so it
starts with the farm and is stopped with it (``rack down``, ``Scenario.down``)::

    with speaking(rack):
        serve_farm(...)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from provisiond.agent import lldp
from provisiond.errors import BadRequest
from provisiond.netboot.netns_socket import run_in_netns
from provisiond.rack.vrack_files import RackState, switch_chassis_mac, switch_name

DEFAULT_INTERVAL_S = 2.0
#: What a neighbour may keep the announcement for: four intervals, as lldpd does.
TTL_INTERVALS = 4


def check_swap(swap: Sequence[str] | None, count: int) -> list[str]:
    """``--swap-cables``: two different guests of a ``count``-guest rack, or []."""
    if not swap:
        return []
    names = [name.strip() for name in swap]
    guests = {f"vm{k}" for k in range(1, count + 1)}
    if len(names) != 2 or names[0] == names[1] or not set(names) <= guests:
        raise BadRequest(
            f"swap cables {','.join(swap)!r}: give two different guests of this rack",
            hint=f"e.g. --swap-cables vm1,vm2 (the guests are vm1 to vm{count})",
        )
    return names


def announcements(rack: RackState, interval_s: float) -> list[tuple[str, dict[str, Any]]]:
    """(tap, the neighbour announced on it) for each guest, with the cable swap applied."""
    by_name = {g.name: g for g in rack.guests}
    cabled_to = {name: name for name in by_name}  # guest -> whose planned port it is on
    if len(rack.swap_cables) == 2 and set(rack.swap_cables) <= set(by_name):
        first, second = rack.swap_cables
        cabled_to[first], cabled_to[second] = second, first
    chassis = switch_chassis_mac(rack.name)
    found = []
    for guest in rack.guests:
        port = by_name[cabled_to[guest.name]]
        neighbour = {
            "chassis_id": chassis,
            "chassis_id_subtype": "mac",
            "port_id": port.switch_port,
            "port_id_subtype": "interface_name",
            "port_description": port.name,
            "system_name": switch_name(rack.name),
            "system_description": f"provisiond virtual switch of rack {rack.name}",
            "mgmt_addresses": [rack.boot_address],
            "ttl": max(1, round(interval_s * TTL_INTERVALS)),
        }
        found.append((guest.tap, neighbour))
    return found


class Speaker:
    """Sends each guest's frame every ``interval_s`` from a daemon thread until :meth:`stop`."""

    def __init__(self, rack: RackState, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not 0.05 <= interval_s <= 3600:
            raise BadRequest(f"LLDP interval {interval_s} s", hint="give 0.05 to 3600 seconds")
        self.rack = rack
        self.interval_s = interval_s
        self.sent = 0
        self.failed: dict[str, str] = {}  # tap -> the last send error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: list[tuple[str, socket.socket, bytes]] = []

    def _open(self) -> list[tuple[str, socket.socket, bytes]]:
        """One send-only packet socket per tap (run inside the rack's namespace)."""
        opened: list[tuple[str, socket.socket, bytes]] = []
        chassis = switch_chassis_mac(self.rack.name)
        try:
            for tap, neighbour in announcements(self.rack, self.interval_s):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: no receive
                opened.append((tap, sock, lldp.encode(neighbour, source_mac=chassis)))
                sock.bind((tap, 0))
        except OSError:
            for _tap, sock, _frame in opened:
                sock.close()
            raise
        return opened

    def start(self) -> Speaker:
        try:
            self._sockets = run_in_netns(self.rack.netns, self._open, timeout=10)
        except (OSError, TimeoutError) as exc:
            raise OSError(
                f"the LLDP switch cannot send on the taps of namespace {self.rack.netns}: {exc}"
            ) from exc
        self._thread = threading.Thread(target=self._run, name="lldp-switch", daemon=True)
        self._thread.start()
        return self

    def send_once(self) -> int:
        """One frame on every tap; how many went out (a tap with no guest drops it silently)."""
        sent = 0
        for tap, sock, frame in self._sockets:
            try:
                sock.send(frame)
            except OSError as exc:
                if self.failed.get(tap) != exc.strerror:  # say it once, not every interval
                    print(f"LLDP switch: sending on {tap} failed: {exc.strerror}", flush=True)
                self.failed[tap] = exc.strerror or str(exc)
                continue
            self.failed.pop(tap, None)
            sent += 1
        self.sent += sent
        return sent

    def _run(self) -> None:
        while True:
            self.send_once()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None
        for _tap, sock, _frame in self._sockets:
            sock.close()
        self._sockets = []

    def __enter__(self) -> Speaker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def speaking(rack: RackState, interval_s: float = DEFAULT_INTERVAL_S) -> Iterator[Speaker]:
    """The rack's switch speaking LLDP for the duration of the ``with`` block."""
    with Speaker(rack, interval_s) as speaker:
        print(
            f"LLDP switch {switch_name(rack.name)}: {len(rack.guests)} ports every {interval_s:g}s"
            + (f", cables of {' and '.join(rack.swap_cables)} swapped" if rack.swap_cables else ""),
            flush=True,
        )
        yield speaker
