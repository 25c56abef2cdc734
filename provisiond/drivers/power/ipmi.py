"""The ``ipmi`` driver: IPMI 2.0 (RMCP+) through pyghmi.

One long-lived pyghmi ``Command`` per BMC: pyghmi 1.6.19 raises TypeError when a
new Command follows ``logout()`` to the same BMC in one process, so the driver
never logs out; it only drops a session that broke and logs in afresh. Many threads
share one driver (see :mod:`.pool`): a lock per driver lets only one of them log in
(concurrent Commands to one BMC race inside pyghmi's session table), and every call
runs inside :meth:`PowerDriver.in_call`, so a settings change that closes the driver
retires its session only after the calls in flight have their answers.

Credentials go to pyghmi as bytes. With str, pyghmi 1.6.19 files a logging-in
session under a str key but deletes it under a bytes key when the login fails, so
every later Command to that BMC gets the dead session back ("Session no longer
connected") even after the BMC returns (measured against ipmi_sim).

While any call is in flight, a nudger wakes pyghmi's I/O thread every 50 ms. When
many threads wait at once, pyghmi 1.6.19 loses wake-ups: one thread handles the
packet another waits for, and the owner sleeps until its next deadline, so logins
stall for 25-30 s or hang. Measured on 1,000 simulated BMCs, 64 threads: without
the nudger the run hung; with it, login + get_power took 1.29-1.36 s (5 runs), the
slowest single one 0.26 s.

pyghmi 1.6.19 takes its two session locks in both orders (a send holds
KEEPALIVE_SESSIONS and takes WAITING_SESSIONS; a retransmit, the reverse), which
deadlocked every IPMI thread under load. :mod:`.pyghmi_patch` makes the send after
KEEPALIVE_SESSIONS is released, so no order can wait on the other. (Merging the two
locks, the workaround before it, made every send wait for every retransmit: warm
sync of 1,000 BMCs 6.1x faster than ipmitool, against 13-14x with the locks apart.)
It also keeps a reply that arrives before its caller waits from being slept through
until the retry deadline (0.5-1 s), which the nudger cannot wake.

These workarounds touch pyghmi's private names, so pyproject pins pyghmi to
exactly :data:`PYGHMI_VERSION`, the lock patch refuses any other pyghmi when this
module is imported, and the daemon calls :func:`check_pyghmi` at start-up.

Only pyghmi's own failures (``IpmiException``, ``UnsupportedFunctionality`` and the
socket errors and timeouts of its transport) become BMC errors. Anything else is a
bug and propagates with its traceback, never retried, except the session defects
pyghmi raises from inside its session module (:func:`pyghmi_session_defect`).

The identity read (:meth:`IpmiPower.read_identity`, one per BMC in a discovery
sweep) asks only for what :class:`Identity` keeps: Get Device ID once, FRU 0 and the
system GUID through pyghmi's FRU reader, and LAN parameter 5 (the MAC) of the channel
the session runs on. pyghmi's ``get_inventory_of_component`` and
``get_net_configuration`` asked Get Device ID again on every call for BMCs it has no
OEM handler for, and read nine LAN parameters to return one: 18 round trips per BMC
on the simulator, 5 now (15 and 3 on ipmi_sim, which has no FRU 0; client CPU per read
1.0 -> 0.25 ms there). Discovery of 1,000 simulated BMCs, interleaved A/B on a loaded
2-core machine: 5.7-6.2 s -> 3.4-4.1 s, daemon CPU 4.6-5.0 s -> 2.8-3.7 s. For the
vendors pyghmi has an OEM handler for (Lenovo, IBM), whose handler rewrites FRU 0,
FRU 0 still comes from pyghmi's ``get_inventory_of_component``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.drivers.power import ipmi_dcmi, ipmi_identity, pyghmi_patch
from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcError,
    BmcPrivilegeError,
    BmcSessionError,
    BmcTarget,
    BmcUnreachable,
    BmcUnsupported,
    BootDevice,
    Identity,
    PowerAction,
    PowerDriver,
    PowerState,
    Setting,
)
from provisiond.errors import ConfigError
from provisiond.logging import get_logger

log = get_logger(__name__)

#: The pyghmi release whose private names the workarounds below use (pinned in pyproject).
PYGHMI_VERSION = pyghmi_patch.PYGHMI_VERSION
_PYGHMI_PRIVATE_NAMES = ("iosockets", "myself", "KEEPALIVE_SESSIONS", "WAITING_SESSIONS")


def check_pyghmi() -> None:
    """Refuse to start with a pyghmi other than the one the workarounds were written for."""
    installed = importlib.metadata.version("pyghmi")
    missing = [name for name in _PYGHMI_PRIVATE_NAMES if not hasattr(pyghmi_session, name)]
    if not hasattr(pyghmi_session.Session, "_mark_broken"):
        missing.append("Session._mark_broken")
    if not pyghmi_patch.installed():
        missing.append("the lock-order patch (pyghmi_patch)")
    if installed == PYGHMI_VERSION and not missing:
        return
    lacks = f" (it lacks {', '.join(missing)})" if missing else ""
    raise ConfigError(
        f"pyghmi {installed} is installed{lacks}, but the IPMI driver works around "
        f"defects of pyghmi {PYGHMI_VERSION} through its private names",
        hint=f"install pyghmi=={PYGHMI_VERSION} (pip install 'pyghmi=={PYGHMI_VERSION}'), "
        "or re-check each workaround in provisiond/drivers/power/ipmi.py against the new "
        "release before changing the pin",
    )


class _Nudger:
    """Wakes pyghmi's I/O thread while calls are in flight (see the module docstring)."""

    INTERVAL = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0
        self._active = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        with self._lock:
            self._busy += 1
            self._active.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pyghmi-nudger", daemon=True)
                self._thread.start()

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0:
                self._active.clear()

    def _run(self) -> None:
        while True:
            self._active.wait()
            time.sleep(self.INTERVAL)
            sockets = getattr(pyghmi_session, "iosockets", None)
            me = getattr(pyghmi_session, "myself", None)
            if sockets and me:
                # The same self-addressed byte pyghmi sends to break its own select().
                with contextlib.suppress(OSError):
                    sockets[0].sendto(b"\x01", (me, sockets[0].getsockname()[1]))


_NUDGER = _Nudger()

# The lock-order fix (see the module docstring); raises ConfigError on another pyghmi.
pyghmi_patch.install()

_ACTIONS = {
    PowerAction.ON: "on",
    PowerAction.OFF: "off",
    PowerAction.SOFT_OFF: "shutdown",
    PowerAction.RESET: "reset",
}
_BOOT_DEVICES = {
    BootDevice.PXE: "network",
    BootDevice.DISK: "hd",
    BootDevice.CDROM: "optical",
    BootDevice.BIOS: "setup",
}
#: IANA enterprise numbers of common BMC vendors (Get Device ID's manufacturer id).
# Completion codes: 0xc0 node busy, 0xc3 timeout, 0xce cannot respond -> retry.
_BUSY_CODES = {0xC0, 0xC3, 0xCE}
# 0xc1 invalid command, 0xc9 parameter out of range, 0xd4 insufficient privilege.
_UNSUPPORTED_CODES = {0xC1, 0xC9}
#: How pyghmi words a privilege refusal: RMCP+ 0x09/0x0A in RAKP 2, Set Session Privilege
#: Level 0x80/0x81 ("... while requesting privelege level 3", its spelling), or 0xD4.
_PRIVILEGE_WORDS = ("unauthorized role", "invalid role", "privilege level", "privelege level")
#: The code of a refusal for lack of privilege, as opposed to a wrong password.
PRIVILEGE_CODE = BmcPrivilegeError.code
#: What pyghmi raises when a BMC fails, refuses or does not answer. InvalidParameterValue
#: is missing on purpose: pyghmi raises it for arguments we got wrong, a bug of ours.
PYGHMI_FAILURES = (pyghmi_exc.IpmiException, pyghmi_exc.UnsupportedFunctionality, OSError)
_SESSION_MODULE: str = os.path.realpath(str(pyghmi_session.__file__))


def pyghmi_session_defect(exc: BaseException) -> bool:
    """Whether ``exc`` is pyghmi's session state gone wrong, which a fresh login clears.

    Seen in pyghmi 1.6.19: a failed login beside a live session leaves a Session
    without ``errormsg``, so pyghmi's own ``raise IpmiException(self.errormsg)``
    raises AttributeError. Only an AttributeError, TypeError or KeyError raised
    *inside pyghmi's session module* counts: the same error raised by our code, or
    elsewhere in pyghmi, is a bug to fix, not a session to renew.
    """
    if not isinstance(exc, AttributeError | TypeError | KeyError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.realpath(tb.tb_frame.f_code.co_filename) == _SESSION_MODULE


def classify(exc: BaseException, target: BmcTarget, doing: str) -> BmcError:
    """Map one of :data:`PYGHMI_FAILURES` to a fatal or retryable error an operator can act on."""
    text = str(exc) if str(exc) not in ("", "None") else "timeout"
    code = getattr(exc, "ipmicode", 0) or 0
    low = text.lower()
    where = f"{target.endpoint}"
    if "password" in low or "unauthorized name" in low or "rakp4" in low:
        return BmcAuthError(
            f"IPMI login rejected by {where} while trying to {doing}: {text}",
            hint=f"check the username and password in {target.credential_source}",
        )
    if code == 0xD4 or any(words in low for words in _PRIVILEGE_WORDS):
        # The password was right (or not yet checked): a new password will not help.
        return BmcPrivilegeError(
            f"IPMI user {target.username!r} lacks the privilege to {doing} on {where}: {text}",
            hint=f"give the BMC user of {target.credential_source} the administrator "
            "privilege level on the BMC (operator is the least that can change power)",
        )
    if "insufficient resources" in low or code in _BUSY_CODES:
        return BmcBusy(
            f"BMC {where} is busy while trying to {doing}: {text}",
            hint="the BMC has too many open sessions or is busy; it clears by itself",
        )
    if "timeout" in low or "no longer connected" in low or isinstance(exc, OSError):
        return BmcUnreachable(
            f"no answer from BMC {where} while trying to {doing}",
            hint="check the address and port, that the BMC is powered and its LAN "
            "channel is enabled for IPMI over LAN",
        )
    if code in _UNSUPPORTED_CODES or isinstance(exc, pyghmi_exc.UnsupportedFunctionality):
        return BmcUnsupported(
            f"BMC {where} does not support {doing}: {text}",
            hint="this BMC cannot do that over IPMI; try the redfish driver",
        )
    return BmcError(f"BMC {where} failed to {doing}: {text}", hint="see the BMC's event log")


class IpmiPower(PowerDriver):
    name = "ipmi"
    settings = (
        Setting("address", "BMC address", required=True),
        Setting("port", "UDP port", default=623),
        Setting("username", "BMC user", required=True),
        Setting("password", "BMC password", required=True, secret=True),
    )
    reads_watts = True

    def __init__(self, target: BmcTarget) -> None:
        super().__init__(target)
        self._command: Any = None
        self._dcmi = True  # until the BMC says it has no DCMI power reading
        # One login however many threads ask at once: concurrent Commands to one BMC
        # race inside pyghmi's session table. Per driver, so other BMCs never wait.
        self._login = threading.RLock()

    @contextlib.contextmanager
    def _bmc_errors(self, doing: str, session: Any = None) -> Iterator[None]:
        """pyghmi's failures become BMC errors; anything else is a bug and propagates.

        A retryable failure retires ``session``: the next call logs in afresh.
        """
        try:
            yield
        except PYGHMI_FAILURES as exc:
            error = classify(exc, self.target, doing)
        except (AttributeError, TypeError, KeyError) as exc:
            if not pyghmi_session_defect(exc):
                raise
            log.warning("pyghmi_session_defect", bmc=self.target.endpoint, exc_info=exc)
            error = BmcSessionError(
                f"the IPMI session to {self.target.endpoint} broke while trying to {doing} "
                f"({type(exc).__name__} inside pyghmi: {exc})",
                hint="provisiond logs in again on the next attempt",
            )
        else:
            return
        if error.retryable and session is not None:
            self._forget(session)
        raise error from None

    def _session(self, doing: str) -> Any:
        with self._login:
            if self._command is None:
                with self._bmc_errors(doing), _NUDGER:
                    self._command = ipmi_command.Command(
                        bmc=self.target.address,
                        userid=self.target.username.encode(),
                        password=self.target.password.encode(),
                        port=self.target.port,
                        keepalive=True,
                    )
            return self._command

    def _call(self, doing: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._run(doing, lambda command: getattr(command, method)(*args, **kwargs))

    def _run(self, doing: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(command)`` on our pyghmi Command, its failures mapped as for any call."""
        with self.in_call():
            session = self._session(doing)
            with self._bmc_errors(doing, session), _NUDGER:
                result = fn(session)
        if isinstance(result, dict) and "error" in result:
            raise classify(
                pyghmi_exc.IpmiException(result["error"], result.get("code", 0)),
                self.target,
                doing,
            )
        return result

    def get_power(self) -> PowerState:
        state = self._call("read power state", "get_power")["powerstate"]
        return PowerState(state) if state in ("on", "off") else PowerState.UNKNOWN

    def set_power(self, action: PowerAction) -> None:
        if action is PowerAction.CYCLE:
            # Chassis Control 0x02 (power cycle) is refused while off; cycle then means on.
            if self.get_power() is PowerState.OFF:
                self._call("power on", "set_power", "on")
            else:
                self._call("power cycle", "raw_command", netfn=0, command=2, data=[2])
            return
        self._call(f"power {action.value}", "set_power", _ACTIONS[action])

    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool = False
    ) -> None:
        self._call(
            f"set boot device {device.value}",
            "set_bootdev",
            _BOOT_DEVICES[device],
            persist=persistent,
            uefiboot=uefi,
        )

    def read_watts(self) -> int | None:
        """DCMI Get Power Reading (:mod:`.ipmi_dcmi`); a BMC without DCMI is not asked again."""
        if not self._dcmi:
            return None
        try:
            response = self._run("read the power draw (DCMI)", ipmi_dcmi.request)
        except ipmi_dcmi.NoDcmi as exc:
            self._dcmi = False
            log.info("bmc_without_dcmi", bmc=self.target.endpoint, answer=str(exc))
            return None
        return ipmi_dcmi.current_watts(response.get("data", b""))

    def read_identity(self) -> Identity:
        """Vendor, firmware, serial, model, GUID and BMC MAC: 3-5 IPMI round trips.

        Get Device ID (1), FRU 0 (Get FRU Inventory Area Info, then one Read FRU Data
        per 224 bytes) with Get System GUID (1), and LAN parameter 5 (1). The device id
        is required (its failure is the call's error); FRU 0 and the MAC are best
        effort: a BMC without them, or that refuses them, leaves those fields empty.
        """
        device = self._run("read device id", ipmi_identity.read_device_id)
        vendor_id = int(device["manufacturer_id"])
        identity = Identity(
            vendor=ipmi_identity.VENDORS.get(vendor_id, f"IANA {vendor_id}"),
            firmware=str(device["firmware_version"]),
        )
        fru = ipmi_identity.read_fru_zero(self._run, device, self.target.endpoint)
        identity.serial = str(fru.get("Serial Number") or fru.get("Board serial number") or "")
        identity.vendor = str(fru.get("Manufacturer") or identity.vendor)
        identity.model = str(fru.get("Product name") or fru.get("Board product name") or "")
        identity.guid = str(fru.get("UUID") or "")
        try:
            identity.bmc_mac = self._run("read the BMC's MAC address", ipmi_identity.read_bmc_mac)
        except BmcError:
            identity.bmc_mac = ""
        return identity

    def _forget(self, failed: Any = None) -> None:
        """Drop our session (or only ``failed``, if it still is ours) from pyghmi's cache.

        A new Command to the same BMC would otherwise get the cached session back,
        still marked logged in, even after the BMC rebooted and forgot it. pyghmi's
        own _mark_broken is the one call that retires a session without the
        logout() defect (see the module docstring); measured to take < 1 ms.
        """
        with self._login:
            command = self._command
            if failed is not None and command is not failed:
                return  # another thread already replaced the session that failed
            self._command = None
        if command is not None:
            with contextlib.suppress(Exception):
                command.ipmi_session._mark_broken("retired by provisiond")

    def _drop_session(self) -> None:
        self._forget()
