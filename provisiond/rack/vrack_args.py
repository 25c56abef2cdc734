"""What ``vrack.up`` checks before it builds anything: names, sizes, firmware, faults.

Each bad value is a :class:`~provisiond.errors.BadRequest` (or a
:class:`~provisiond.errors.ConfigError` for what the host lacks) with a hint, raised
before a namespace, tap or file exists.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence

from provisiond.errors import BadRequest, ConfigError
from provisiond.rack.qemu import OVMF_CODE, OVMF_VARS, QEMU

__all__ = [
    "MAX_GUESTS",
    "NAME",
    "check_args",
    "check_budget",
    "check_firmware_and_nics",
    "check_miswire",
]

MAX_GUESTS = 42  # one per U of a 42U rack; addresses .11-.52 stay below the DHCP range
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")  # as ProvisioningNetwork.name


def check_args(name: str, count: int, ram_mib: int, cpus: int, disk_mib: int) -> None:
    if not NAME.match(name):
        raise BadRequest(
            f"rack name {name!r} is not lower-case letters, digits and '-' (max 32)",
            hint="e.g. --name vrack",
        )
    for what, value, low, high in (
        ("count", count, 1, MAX_GUESTS),
        ("ram", ram_mib, 64, 65536),
        ("cpus", cpus, 1, 64),
        ("disk", disk_mib, 4, 1 << 20),
    ):
        if not low <= value <= high:
            raise BadRequest(f"{what} {value} is outside {low}-{high}", hint=f"pick {low}-{high}")
    missing = [t for t in ("ip", QEMU) if shutil.which(t) is None]
    if missing:
        raise ConfigError(
            f"missing: {', '.join(missing)}",
            hint="apt-get install iproute2 qemu-system-x86 ipxe-qemu",
        )
    if os.geteuid() != 0:
        raise ConfigError(
            "the virtual rack needs root", hint="network namespaces and taps are root's"
        )


def check_firmware_and_nics(count: int, uefi: int, two_nics: int) -> None:
    for option, value, which in (("uefi", uefi, "last"), ("two-nics", two_nics, "first")):
        if not 0 <= value <= count:
            raise BadRequest(
                f"--{option} {value} with {count} guest(s)",
                hint=f"give 0 to {count}: that many of the guests (the {which} ones)",
            )
    if uefi and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise ConfigError(
            f"UEFI guests need OVMF ({OVMF_CODE}, {OVMF_VARS}), which is missing",
            hint="apt-get install ovmf (scripts/bootstrap.sh installs it)",
        )


def check_miswire(pair: Sequence[str] | None, count: int) -> list[str]:
    """``--pdu-miswire``: two different guests of a ``count``-guest rack, or []."""
    if not pair:
        return []
    names = [name.strip() for name in pair]
    guests = {f"vm{k}" for k in range(1, count + 1)}
    if len(names) != 2 or names[0] == names[1] or not set(names) <= guests:
        raise BadRequest(
            f"PDU miswire {','.join(pair)!r}: give two different guests of this rack",
            hint=f"e.g. --pdu-miswire vm1,vm2 (the guests are vm1 to vm{count})",
        )
    return names


def check_budget(watts: int) -> int:
    if not 0 <= watts <= 2**31 - 1:
        raise BadRequest(
            f"power budget {watts} W is out of range",
            hint="give the rack's budget in watts, e.g. 2000",
        )
    return watts
