"""The ``ipmi`` driver: IPMI 2.0 (RMCP+) through pyghmi.

One long-lived pyghmi ``Command`` per BMC: pyghmi 1.6.19 raises TypeError when a
new Command follows ``logout()`` to the same BMC in one process, so the driver
never logs out; it only drops a session that broke and logs in afresh.

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
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as pyghmi_session

from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcError,
    BmcRetryableError,
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
from provisiond.validators import normalize_mac


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

# pyghmi 1.6.19 takes KEEPALIVE_SESSIONS then WAITING_SESSIONS when it sends
# (send_payload -> _xmit_packet), but WAITING_SESSIONS then KEEPALIVE_SESSIONS when a
# retransmit fires inside wait_for_rsp (-> _timedout -> send_payload): a lock-order
# inversion. Under load it deadlocked every IPMI thread in the process (seen in the
# test suite: all executor threads parked in util.protect). One re-entrant lock for
# both removes the inversion; the sections it guards are a few dict operations.
pyghmi_session.WAITING_SESSIONS = pyghmi_session.KEEPALIVE_SESSIONS

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
_VENDORS = {
    343: "Intel",
    674: "Dell",
    2: "IBM",
    11: "HPE",
    10876: "Supermicro",
    19046: "Lenovo",
    20301: "IBM",
    42385: "Huawei",
    4753: "OpenIPMI",
    40981: "provisiond-sim",
}
# Completion codes: 0xc0 node busy, 0xc3 timeout, 0xce cannot respond -> retry.
_BUSY_CODES = {0xC0, 0xC3, 0xCE}
# 0xc1 invalid command, 0xc9 parameter out of range, 0xd4 insufficient privilege.
_UNSUPPORTED_CODES = {0xC1, 0xC9}
#: How pyghmi words a privilege refusal: RMCP+ 0x09/0x0A in RAKP 2, Set Session Privilege
#: Level 0x80/0x81 ("... while requesting privelege level 3", its spelling), or 0xD4.
_PRIVILEGE_WORDS = ("unauthorized role", "invalid role", "privilege level", "privelege level")
#: The code of a refusal for lack of privilege, as opposed to a wrong password.
PRIVILEGE_CODE = "bmc_privilege_insufficient"


def classify(exc: BaseException, target: BmcTarget, doing: str) -> BmcError:
    """Map a pyghmi failure to a fatal or retryable error an operator can act on."""
    if isinstance(exc, (AttributeError, TypeError, KeyError, IndexError, AssertionError)):
        # pyghmi's own session state went wrong (seen: "'Session' object has no attribute
        # 'errormsg'" after a failed login beside a live session); a fresh login clears it.
        return BmcSessionError(
            f"the IPMI session to {target.endpoint} broke while trying to {doing} "
            f"({type(exc).__name__}: {exc})",
            hint="provisiond logs in again on the next attempt",
        )
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
        return BmcAuthError(
            f"IPMI user {target.username!r} lacks the privilege to {doing} on {where}: {text}",
            hint=f"give the BMC user of {target.credential_source} the administrator "
            "privilege level on the BMC (operator is the least that can change power)",
            code=PRIVILEGE_CODE,
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

    def __init__(self, target: BmcTarget) -> None:
        super().__init__(target)
        self._command: Any = None

    def _session(self, doing: str) -> Any:
        if self._command is None:
            try:
                with _NUDGER:
                    self._command = ipmi_command.Command(
                        bmc=self.target.address,
                        userid=self.target.username.encode(),
                        password=self.target.password.encode(),
                        port=self.target.port,
                        keepalive=True,
                    )
            except Exception as exc:  # pyghmi raises bare IpmiException, OSError, ...
                raise classify(exc, self.target, doing) from None
        return self._command

    def _call(self, doing: str, method: str, *args: Any, **kwargs: Any) -> Any:
        session = self._session(doing)
        try:
            with _NUDGER:
                result = getattr(session, method)(*args, **kwargs)
        except Exception as exc:
            error = classify(exc, self.target, doing)
            if isinstance(error, BmcRetryableError):
                self._forget()  # possibly broken: the next call logs in afresh
            raise error from None
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

    def read_identity(self) -> Identity:
        device = self._call("read device id", "_get_device_id")
        vendor_id = int(device.get("manufacturer_id", 0))
        identity = Identity(
            vendor=_VENDORS.get(vendor_id, f"IANA {vendor_id}"),
            firmware=str(device.get("firmware_version", "")),
        )
        try:
            fru: dict[str, Any] = self._call("read FRU 0", "get_inventory_of_component", "System")
        except BmcUnreachable:
            raise
        except BmcError:
            fru = {}  # many BMCs have no FRU 0; identity is best effort beyond the device id
        identity.serial = str(fru.get("Serial Number") or fru.get("Board serial number") or "")
        identity.vendor = str(fru.get("Manufacturer") or identity.vendor)
        identity.model = str(fru.get("Product name") or fru.get("Board product name") or "")
        identity.guid = str(fru.get("UUID") or "")
        try:
            net = self._call("read LAN configuration", "get_net_configuration")
            identity.bmc_mac = normalize_mac(str(net.get("mac_address") or ""))
        except (BmcError, ValueError):
            identity.bmc_mac = ""
        return identity

    def _forget(self) -> None:
        """Drop our session from pyghmi's process-wide cache.

        A new Command to the same BMC would otherwise get the cached session back,
        still marked logged in, even after the BMC rebooted and forgot it. pyghmi's
        own _mark_broken is the one call that retires a session without the
        logout() defect (see the module docstring); measured to take < 1 ms.
        """
        if self._command is not None:
            with contextlib.suppress(Exception):
                self._command.ipmi_session._mark_broken("retired by provisiond")
        self._command = None

    def close(self) -> None:
        self._forget()
