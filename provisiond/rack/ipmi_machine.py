"""The machine behind a simulated BMC: its identity and a pluggable power backend.

A BMC owns the boot flags; the backend owns the power. When the BMC powers the machine
on or resets it, it passes the boot device that applies to that boot, so a QEMU
backend can start ``qemu-system-x86_64 -boot n`` for PXE without asking back:

    class QemuBackend:
        def __init__(self, cmdline: list[str], pidfile: Path) -> None: ...
        def is_on(self) -> bool: ...            # os.kill(pid, 0) on the pidfile's PID
        def power_on(self, boot: BootDevice) -> None: ...  # Popen(cmdline + boot args)
        def power_off(self) -> None: ...        # SIGKILL by PID
        def soft_off(self) -> None: ...         # QMP system_powerdown, or SIGTERM
        def reset(self, boot: BootDevice) -> None: ...     # off, then on with ``boot``

Backend methods run on the farm's event loop: they must return quickly (start or
signal a process; never wait for it).

What the machine draws is the BMC's :class:`PowerMeter` (DCMI Get Power Reading): 0 W
while off; ``idle_watts`` plus ``load`` (0-1) of the way to ``load_watts`` while on.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "BOOT_DEVICES",
    "BmcIdentity",
    "BootDevice",
    "InMemoryMachine",
    "MachineBackend",
    "PowerMeter",
]

# Boot device selector of boot flags byte 2, bits 5:2 (IPMI 2.0 table 28-14).
BOOT_DEVICES: dict[int, str] = {
    0x0: "none",
    0x1: "pxe",
    0x2: "disk",
    0x3: "safe",
    0x4: "diag",
    0x5: "cdrom",
    0x6: "bios",
    0xF: "floppy",
}
BOOT_SELECTORS = {name: selector for selector, name in BOOT_DEVICES.items()}

_NAMESPACE = uuid.UUID("6f1b7c1e-5d0a-4f7e-9a51-2f2a3c9e0b11")


@dataclass(frozen=True)
class BootDevice:
    """The device one boot uses. ``none`` means the firmware's own order."""

    device: str = "none"
    uefi: bool = False

    def qemu_boot_arg(self) -> str:
        """The ``-boot`` letter QEMU needs for this device (n: network, c: disk, d: cdrom)."""
        return {"pxe": "n", "cdrom": "d"}.get(self.device, "c")


class MachineBackend(Protocol):
    """Power control of the machine a BMC manages."""

    def is_on(self) -> bool: ...

    def power_on(self, boot: BootDevice) -> None: ...

    def power_off(self) -> None: ...

    def soft_off(self) -> None: ...

    def reset(self, boot: BootDevice) -> None: ...


@dataclass
class InMemoryMachine:
    """The default backend: a power bit plus a record of boots, for assertions."""

    on: bool = False
    boots: list[BootDevice] = field(default_factory=list)

    def is_on(self) -> bool:
        return self.on

    def power_on(self, boot: BootDevice) -> None:
        self.on = True
        self.boots.append(boot)

    def power_off(self) -> None:
        self.on = False

    def soft_off(self) -> None:
        self.on = False  # an OS that obeys ACPI at once

    def reset(self, boot: BootDevice) -> None:
        self.on = True
        self.boots.append(boot)


@dataclass(frozen=True)
class PowerMeter:
    """The draw a simulated BMC reports: 0 W off, ``idle_watts`` to ``load_watts`` on."""

    idle_watts: int = 120
    load_watts: int = 350
    #: 0 (idle) to 1 (full load).
    load: float = 0.0

    def watts(self, on: bool) -> int:
        if not on:
            return 0
        load = min(1.0, max(0.0, self.load))
        return round(self.idle_watts + load * (self.load_watts - self.idle_watts))


@dataclass(frozen=True)
class BmcIdentity:
    """What a simulated BMC reports about itself and its machine.

    ``bmc_mac`` is the BMC's own NIC (LAN parameter 5); ``nic_mac`` is the machine's
    boot NIC, reported in the FRU product area's first extra field.
    """

    address: str
    port: int
    serial: str
    bmc_mac: str
    nic_mac: str
    uuid: uuid.UUID
    manufacturer: str = "provisiond"
    product: str = "Simulated Server"
    model: str = "SIM-1"
    version: str = "1.0"

    @classmethod
    def default(cls, address: str, port: int) -> BmcIdentity:
        """Stable across runs and unique per loopback address and port."""
        low = int(ipaddress.IPv4Address(address)) & 0xFFFF
        tail = f"{low >> 8:02x}:{low & 0xFF:02x}:{port >> 8:02x}:{port & 0xFF:02x}"
        return cls(
            address=address,
            port=port,
            serial=f"SIM-{low:04X}-{port:05d}",
            bmc_mac=f"02:00:{tail}",
            nic_mac=f"52:54:{tail}",
            uuid=uuid.uuid5(_NAMESPACE, f"{address}:{port}"),
        )
