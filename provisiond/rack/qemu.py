"""A QEMU guest as the machine behind a simulated BMC (:class:`MachineBackend`).

Power on starts ``ip netns exec <ns> qemu-system-x86_64 ... -boot n|c``; ``ip netns
exec`` execs QEMU, so the child's PID is QEMU's. The PID also goes to a pidfile, so
another process (``provisiond rack down`` after a crash) can find and kill it.

The guest is a ``pc`` with a virtio-net NIC on a tap device that already exists
in the namespace (the rack made it), whose option ROM is the iPXE from Debian's
ipxe-qemu. Its firmware is SeaBIOS (``bios``) or OVMF (``uefi``, Debian's ``ovmf``,
with a per-guest copy of the variable store); under OVMF the NIC's ROM is iPXE's
EFI build. The boot device the BMC hands over picks ``-boot n`` (PXE) or ``-boot c``
(disk) under BIOS, and the ``bootindex`` of the NIC or the disk under UEFI (OVMF
orders boot options by ``bootindex``). Every boot starts a new QEMU, so the BMC's one-time boot
flags apply to exactly one boot. There is no ``-no-reboot``: a reboot from inside
the guest stays inside QEMU, as it would on hardware, and keeps the boot order.

A guest with an ``unwired_mac`` has a second virtio-net NIC *before* the tap's (a lower
PCI slot: ``net0`` to iPXE, ``eth0`` to Linux) on a hub port of an otherwise empty hub,
so nothing ever answers it: a server whose first port is not cabled. SeaBIOS runs the
NICs' iPXE ROMs in PCI order, so a PXE boot first waits out that NIC's DHCP (~18 s
measured) and then boots from the tap's NIC; under OVMF only the tap's NIC has a
``bootindex`` (as an operator would order the boot entries; trying the uncabled NIC
first costs OVMF ~145 s: iPXE, then its own PXEv4/v6 and HTTPv4/v6 attempts).

Serial output (SeaBIOS, iPXE, the kernel console) is appended to a log file; it
reaches the serial port only with ``-nographic`` (DESIGN.md). The accelerator is
TCG, because KVM aborts or hangs on this host kind; ``PROVISIOND_QEMU_ACCEL=kvm``
opts in where KVM works.

Backend methods run on the BMC farm's event loop, so they only start or signal a
process. The one wait is after SIGKILL (bounded, ~10 ms in practice): the tap can
be opened by one QEMU at a time, and a power cycle starts the next one at once.

    backend = QemuBackend(guest, netns="pvd-vrack")
    backend.power_on(BootDevice("pxe"))      # qemu ... -boot n
    backend.is_on()                          # True
    backend.power_off()                      # SIGKILL, reaped

:func:`serve_farm` is the body of a rack's BMC farm process: one BMC per guest and the
rack's PDU on 127.0.0.1, serving until SIGTERM, then every guest off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provisiond.errors import ConfigError
from provisiond.rack.ipmi_machine import BootDevice

__all__ = [
    "ACCELERATORS",
    "QemuBackend",
    "QemuGuest",
    "accel_from_env",
    "kill_recorded",
    "pid_alive",
    "pid_command",
    "serve_farm",
]

ACCELERATORS = ("tcg", "kvm")
QEMU = "qemu-system-x86_64"
FIRMWARES = ("bios", "uefi")
#: Debian's ovmf: the firmware code (read-only) and the template of a guest's variables.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
_KILL_WAIT_S = 3.0


@dataclass(frozen=True)
class QemuGuest:
    """What one guest is made of; the rack creates the tap and the disk."""

    name: str
    mac: str
    tap: str
    disk: Path
    serial_log: Path
    pidfile: Path
    ram_mib: int = 384
    cpus: int = 1
    firmware: str = "bios"
    #: The MAC of an uncabled first NIC ("": the guest has only the tap's NIC).
    unwired_mac: str = ""

    @property
    def vars_file(self) -> Path:
        """The guest's own OVMF variable store (UEFI only), next to its disk."""
        return self.disk.with_suffix(".vars")


def accel_from_env() -> str:
    """``PROVISIOND_QEMU_ACCEL`` (tcg or kvm), TCG when unset."""
    accel = os.environ.get("PROVISIOND_QEMU_ACCEL", "tcg").strip().lower() or "tcg"
    if accel not in ACCELERATORS:
        raise ConfigError(
            f"PROVISIOND_QEMU_ACCEL={accel!r} is not one of {', '.join(ACCELERATORS)}",
            hint="unset it for TCG, or set PROVISIOND_QEMU_ACCEL=kvm where /dev/kvm works",
        )
    return accel


def pid_command(pid: int) -> str:
    """The process's command line joined by spaces; '' if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs: it exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name in parentheses, which may contain ')'.
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is our child and has exited; True when it is gone."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: someone else reaps it
        return not pid_alive(pid)
    return done == pid


def kill_recorded(pid: int, marker: str, sig: int = signal.SIGKILL, wait_s: float = 0.0) -> bool:
    """Signal ``pid`` only when its command line contains ``marker``; True if it was sent.

    A PID from a file may have been recycled by an unrelated process since it was
    written; the marker (``qemu``, ``provisiond``) keeps us from signalling that one.
    With ``wait_s``, waits up to that long for the process to be gone.
    """
    if pid <= 1 or not pid_alive(pid) or marker not in pid_command(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not _reap(pid):
        time.sleep(0.01)
    return True


class QemuBackend:
    """Power of one QEMU guest, started inside network namespace ``netns``."""

    def __init__(self, guest: QemuGuest, netns: str, accel: str = "tcg") -> None:
        if accel not in ACCELERATORS:
            raise ConfigError(f"unknown accelerator {accel!r}", hint="use tcg or kvm")
        self.guest = guest
        self.netns = netns
        self.accel = accel
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self, boot: BootDevice) -> list[str]:
        g = self.guest
        cmd = [
            "ip", "netns", "exec", self.netns, QEMU,
            "-name", g.name,
            "-accel", self.accel,
            "-machine", "pc",
            "-m", str(g.ram_mib),
            "-smp", str(g.cpus),
            "-nographic",
            "-chardev", f"file,id=s0,path={g.serial_log},append=on",
            "-serial", "chardev:s0",
            "-monitor", "none",
            "-netdev", f"tap,id=n0,ifname={g.tap},script=no,downscript=no",
        ]  # fmt: skip
        if g.unwired_mac:  # first on the PCI bus; its hub has no other port
            cmd += [
                "-netdev", "hubport,id=n1,hubid=1",
                "-device", f"virtio-net-pci,netdev=n1,mac={g.unwired_mac}",
            ]  # fmt: skip
        if g.firmware != "uefi":
            return [
                *cmd,
                "-device", f"virtio-net-pci,netdev=n0,mac={g.mac}",
                "-drive", f"file={g.disk},if=virtio,format=raw",
                "-boot", boot.qemu_boot_arg(),
            ]  # fmt: skip
        pxe = boot.qemu_boot_arg() == "n"
        return [
            *cmd,
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={g.vars_file}",
            "-device", f"virtio-net-pci,netdev=n0,mac={g.mac},bootindex={1 if pxe else 2}",
            "-drive", f"file={g.disk},if=none,id=d0,format=raw",
            "-device", f"virtio-blk-pci,drive=d0,bootindex={2 if pxe else 1}",
        ]  # fmt: skip

    def pid(self) -> int | None:
        """The running QEMU's PID: our child's, else the pidfile's (a QEMU left running)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None
            self.guest.pidfile.unlink(missing_ok=True)
            return None
        try:
            pid = int(self.guest.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and QEMU in pid_command(pid) else None

    def is_on(self) -> bool:
        return self.pid() is not None

    def power_on(self, boot: BootDevice) -> None:
        if self.is_on():
            return
        self._proc = subprocess.Popen(
            self.command(boot), stdin=subprocess.DEVNULL, start_new_session=True
        )
        tmp = self.guest.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        tmp.replace(self.guest.pidfile)

    def power_off(self) -> None:
        pid = self.pid()
        if pid is not None:
            kill_recorded(pid, QEMU, signal.SIGKILL, wait_s=_KILL_WAIT_S)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(0)
            self._proc = None
        self.guest.pidfile.unlink(missing_ok=True)

    def soft_off(self) -> None:
        # -monitor none leaves no QMP for ACPI powerdown; QEMU exits cleanly on SIGTERM.
        pid = self.pid()
        if pid is not None:
            kill_recorded(pid, QEMU, signal.SIGTERM)

    def reset(self, boot: BootDevice) -> None:
        self.power_off()
        self.power_on(boot)


def serve_farm(
    guests: Sequence[QemuGuest],
    netns: str,
    accel: str,
    *,
    base_port: int,
    username: str,
    password: str,
    pdu_name: str,
    community: str,
    ready_file: Path,
) -> None:
    """Serve a BMC per guest and the rack's PDU on 127.0.0.1 until SIGTERM/SIGINT/SIGHUP;
    then power all off (:func:`provisiond.rack.rack_farm.run_rack_farm`).

    Once every port is bound, ``ready_file`` gets ``{"pid", "base_port", "pdu_port"}``
    (written atomically); guest ``i`` (0-based) has its BMC on ``base_port + i`` and
    is fed by the PDU's outlet ``i + 1``.
    """
    from provisiond.rack.rack_farm import run_rack_farm  # it imports the SNMP stack

    backends = [QemuBackend(guest, netns, accel) for guest in guests]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    try:
        run_rack_farm(
            backends, base_port=base_port, username=username, password=password,
            pdu_name=pdu_name, community=community, ready_file=ready_file, stop=stop,
        )  # fmt: skip
    finally:
        for backend in backends:
            backend.power_off()
        ready_file.unlink(missing_ok=True)
        print("BMCs stopped, guests off", flush=True)
