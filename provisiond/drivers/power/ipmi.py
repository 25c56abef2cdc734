"""The ``ipmi`` driver: IPMI 2.0 (RMCP+) through pyghmi.

One long-lived pyghmi ``Command`` per BMC: pyghmi 1.6.19 raises TypeError when a
new Command follows ``logout()`` to the same BMC in one process, so the driver
never logs out; it only drops a session that broke and logs in afresh.

Credentials go to pyghmi as bytes. With str, pyghmi 1.6.19 files a logging-in
session under a str key but deletes it under a bytes key when the login fails, so
every later Command to that BMC gets the dead session back ("Session no longer
connected") even after the BMC returns (measured against ipmi_sim).
"""

from __future__ import annotations

from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command

from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcError,
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


def classify(exc: BaseException, target: BmcTarget, doing: str) -> BmcError:
    """Map a pyghmi failure to a fatal or retryable error an operator can act on."""
    text = str(exc) if str(exc) not in ("", "None") else "timeout"
    code = getattr(exc, "ipmicode", 0) or 0
    low = text.lower()
    where = f"{target.endpoint}"
    if "password" in low or "unauthorized name" in low or "rakp4" in low:
        return BmcAuthError(
            f"IPMI login rejected by {where} while trying to {doing}: {text}",
            hint=f"check the username and password in {target.credential_source}",
        )
    if "unauthorized role" in low or code == 0xD4:
        return BmcAuthError(
            f"IPMI user {target.username!r} lacks the privilege to {doing} on {where}",
            hint="give that BMC user the administrator privilege level",
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
            result = getattr(session, method)(*args, **kwargs)
        except Exception as exc:
            error = classify(exc, self.target, doing)
            if isinstance(error, BmcUnreachable):
                self._command = None  # broken: the next call logs in again
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

    def close(self) -> None:
        # Deliberately no logout(): see the module docstring.
        self._command = None
