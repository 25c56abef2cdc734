"""The ``redfish`` driver: DMTF Redfish over HTTPS through pyghmi, with the certificate pinned.

TLS is never switched off silently. The BMC's certificate is pinned by the SHA-256
fingerprint of its DER encoding (``options["cert_fingerprint"]``), checked through
pyghmi's ``verifycallback`` on every connection, before any credentials are sent.
Without a fingerprint the driver refuses, unless the operator chose
``options["tls_verify"] = "system"`` (the system CA store plus a hostname check,
pyghmi's default path). There is no "insecure" setting. The fingerprint rules and
the certificate reader for ``machines bmc-cert`` are in :mod:`.redfish_tls`.

pyghmi's ``redfish.command.Command`` logs in (basic auth, or a session token when
the BMC has a SessionService), finds the system and its Reset action, and holds
the pinned web client. One Command per driver, kept for its life and made afresh
after a connection failure. Requests themselves go through that client's
``grab_json_response_with_status``, because pyghmi 1.6.19's higher-level calls
lose what an operator needs:

- ``_do_web_request`` turns every non-2xx into ``RedfishError`` with the
  Redfish MessageIds only, dropping the HTTP status, so 401, 404 and 503 look the
  same (sushy-tools says "Base.1.0.GeneralError" for all of them);
- the generic ``set_bootdev`` swallows any error from a PATCH that sets the boot
  mode and retries without the mode, so "boot Legacy" silently becomes whatever
  the BMC had; and ``uefiboot=None`` forces UEFI although documented as
  "leave the mode alone";
- ``get_bootdev`` reads a 30 s cache, so it can report a stale override;
- a given ``sysurl`` is taken unchecked (the "not found" branch is dead code): a
  plain id or a wrong URL fails to read and the Command silently has no system.
  The driver resolves the ``system`` option against /redfish/v1/Systems itself;
- its web client waits 60 s per request and the constructor takes no timeout:
  the driver sets ``wc.mytimeout`` afterwards and probes the BMC with its own
  timeout first, so a dead BMC fails within ``timeout`` rather than a minute. A
  BMC that answers the probe and then hangs inside the constructor can still
  hold its executor slot for up to 60 s per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyghmi.redfish import command as redfish_command
from pyghmi.util import webclient

from provisiond.drivers.power import redfish_meter
from provisiond.drivers.power.base import (
    BmcCertificateMismatch,
    BmcError,
    BmcTarget,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
    BootDevice,
    Identity,
    PowerAction,
    PowerDriver,
    PowerState,
    Setting,
)
from provisiond.drivers.power.redfish_errors import classify, http_error
from provisiond.drivers.power.redfish_tls import (
    format_fingerprint,
    make_verifier,
    normalize_fingerprint,
)
from provisiond.validators import normalize_mac

__all__ = [
    "BmcCertificateMismatch",
    "BmcTlsError",
    "RedfishPower",
    "format_fingerprint",
    "normalize_fingerprint",
]


_BOOT_TARGETS = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.CDROM: "Cd",
    BootDevice.BIOS: "BiosSetup",
}
_SIMPLE_RESETS = {
    PowerAction.ON: "On",
    PowerAction.OFF: "ForceOff",
    PowerAction.SOFT_OFF: "GracefulShutdown",
}
_RESET_ACTION = "#ComputerSystem.Reset"


class RedfishPower(PowerDriver):
    name = "redfish"
    settings = (
        Setting("address", "BMC address", required=True),
        Setting("port", "HTTPS port", default=443),
        Setting("username", "BMC user", required=True),
        Setting("password", "BMC password", required=True, secret=True),
        Setting("cert_fingerprint", "SHA-256 fingerprint of the BMC's TLS certificate"),
        Setting(
            "tls_verify", "'fingerprint' (pin it) or 'system' (CA store)", default="fingerprint"
        ),
        Setting("system", "Redfish system id, only for BMCs that manage several"),
        Setting("timeout", "seconds per HTTPS request", default=10),
    )
    reads_watts = True

    def __init__(self, target: BmcTarget) -> None:
        super().__init__(target)
        self._command: Any = None
        #: (url, shape) of the chassis power reading once found (:mod:`.redfish_meter`).
        self._meter: tuple[str, str] | None = None

    # -- connection -----------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        try:
            return max(0.5, float(self.target.options.get("timeout") or 10))
        except ValueError:
            return 10.0

    def _web(self, verify: Callable[[bytes], bool] | None) -> Any:
        wc = webclient.SecureHTTPConnection(
            self.target.address, self.target.port, verifycallback=verify, timeout=self._timeout
        )
        wc.set_header("Accept", "application/json")
        wc.set_header("OData-Version", "4.0")
        wc.set_basic_credentials(self.target.username, self.target.password)
        return wc

    def _connect(self, doing: str) -> Any:
        if self._command is not None:
            return self._command
        verify = make_verifier(self.target)
        # A probe with our timeout and the status kept: pyghmi's constructor waits 60 s
        # per request and reports a 503 or a 404 only as "Redfish not ready".
        try:
            body, status = self._web(verify).grab_json_response_with_status("/redfish/v1/Systems")
        except Exception as exc:
            raise classify(self.target, exc, doing) from None
        if body == "Target Unavailable":
            raise classify(self.target, ConnectionResetError("connection dropped"), doing)
        if not 200 <= status < 300:
            raise http_error(self.target, status, body, doing, "/redfish/v1/Systems")
        sysurl = self._pick_system(body)
        try:
            command = redfish_command.Command(
                self.target.address,
                self.target.username,
                self.target.password,
                verifycallback=verify,
                sysurl=sysurl,
                port=self.target.port,
            )
        except Exception as exc:
            raise classify(self.target, exc, doing) from None
        command.wc.mytimeout = self._timeout  # every later request dupes this client
        if command.sysurl != sysurl:  # pyghmi drops a system it failed to read
            raise BmcError(
                f"BMC {self.target.endpoint} lists system {sysurl} but does not serve it",
                hint="see the BMC's event log; its Redfish service may be faulty",
            )
        self._command = command
        return command

    def _pick_system(self, collection: Any) -> str:
        """The system's URL from /redfish/v1/Systems and the ``system`` option.

        Done here because pyghmi 1.6.19 takes a given ``sysurl`` unchecked: a plain id
        or a wrong URL fails to read, and it then silently runs without a system.
        """
        where = self.target.endpoint
        members = [
            str(m["@odata.id"])
            for m in (collection.get("Members", []) if isinstance(collection, dict) else [])
            if isinstance(m, dict) and m.get("@odata.id")
        ]
        wanted = (self.target.options.get("system") or "").strip().rstrip("/")
        if wanted:
            for member in members:
                if wanted in (member.rstrip("/"), member.rstrip("/").rsplit("/", 1)[-1]):
                    return member
        elif len(members) == 1:
            return members[0]
        elif not members:
            raise BmcUnsupported(
                f"BMC {where} manages no computer system",
                hint="this Redfish service has no /redfish/v1/Systems member; it may be a "
                "chassis or enclosure manager rather than a server BMC",
            )
        problem = f"has no system {wanted!r}" if wanted else "manages several systems"
        raise BmcUnsupported(
            f"BMC {where} {problem}; it has: {', '.join(members[:8]) or 'none'}",
            hint="set the BMC's 'system' option to the id or URL of one of those",
        )

    def _request(
        self, doing: str, method: str, url: str | None = None, body: Any = None, **headers: str
    ) -> Any:
        """One Redfish call, classified; ``url`` defaults to the system's own."""
        for attempt in range(2):
            command = self._connect(doing)
            path = url or str(command.sysurl)
            wc = command.wc
            try:
                result, status = wc.grab_json_response_with_status(
                    path, body, method=method, headers={**wc.stdheaders, **headers}
                )
            except Exception as exc:
                error = classify(self.target, exc, doing)
                if isinstance(error, BmcUnreachable):
                    self._command = None  # broken: the next call connects afresh
                raise error from None
            if result == "Target Unavailable":  # pyghmi's stand-in for a dropped connection
                self._command = None
                raise classify(self.target, ConnectionResetError("connection dropped"), doing)
            if status == 401 and command.xauthtoken and attempt == 0:
                self._command = None  # the session expired: log in again, once
                continue
            if not 200 <= status < 300:
                if status == 404 and path == command.sysurl:
                    self._command = None  # the system may have been renumbered: rediscover it
                raise http_error(self.target, status, result, doing, path)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _system(self, doing: str) -> dict[str, Any]:
        result = self._request(doing, "GET")
        if not isinstance(result, dict):
            raise BmcError(
                f"BMC {self.target.endpoint} sent no JSON system resource while trying to {doing}",
                hint="see the BMC's event log; its Redfish service may be faulty",
            )
        return result

    # -- the interface ---------------------------------------------------------------

    def get_power(self) -> PowerState:
        state = str(self._system("read power state").get("PowerState", "")).lower()
        # PoweringOn / PoweringOff / Paused are transitional: the caller keeps polling.
        return PowerState(state) if state in ("on", "off") else PowerState.UNKNOWN

    def set_power(self, action: PowerAction) -> None:
        doing = f"power {action.value}"
        system = self._system(doing)
        reset = system.get("Actions", {}).get(_RESET_ACTION, {})
        url = reset.get("target") or (self._command.powerurl if self._command else None)
        if not url:
            raise BmcUnsupported(
                f"BMC {self.target.endpoint} offers no ComputerSystem.Reset action",
                hint="this BMC cannot change power over Redfish; try the ipmi driver",
            )
        allowed: list[str] | None = reset.get("ResetType@Redfish.AllowableValues")
        if action in _SIMPLE_RESETS:
            reset_type = _SIMPLE_RESETS[action]
            if (
                action is PowerAction.ON
                and allowed
                and "On" not in allowed
                and "ForceOn" in allowed
            ):
                reset_type = "ForceOn"
        elif str(system.get("PowerState", "")).lower() == "off":
            reset_type = "On"  # a reset or cycle of a machine that is off means: power it on
        elif action is PowerAction.CYCLE and allowed and "PowerCycle" in allowed:
            reset_type = "PowerCycle"
        else:
            reset_type = "ForceRestart"
        if allowed and reset_type not in allowed:
            raise BmcUnsupported(
                f"BMC {self.target.endpoint} does not offer ResetType {reset_type} "
                f"(it offers {', '.join(allowed)})",
                hint=f"this BMC cannot {doing} over Redfish",
            )
        self._request(doing, "POST", url, {"ResetType": reset_type})

    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool = False
    ) -> None:
        doing = f"set boot device {device.value}"
        boot = self._system(doing).get("Boot", {})
        target = _BOOT_TARGETS[device]
        targets: list[str] | None = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
        if targets and target not in targets:
            raise BmcUnsupported(
                f"BMC {self.target.endpoint} cannot set the boot device to {device.value} "
                f"({target}): it offers {', '.join(targets)}",
                hint="pick another boot device, or set it in the machine's firmware setup",
            )
        payload: dict[str, str] = {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": "Continuous" if persistent else "Once",
        }
        mode = "UEFI" if uefi else "Legacy"
        if boot.get("BootSourceOverrideMode") != mode:
            # Only sent when it changes: many BMCs refuse to write the mode at all.
            modes: list[str] | None = boot.get("BootSourceOverrideMode@Redfish.AllowableValues")
            if modes and mode not in modes:
                raise BmcUnsupported(
                    f"BMC {self.target.endpoint} cannot boot in {mode} mode "
                    f"(it offers {', '.join(modes)})",
                    hint="set the machine's uefi flag to match its firmware",
                )
            payload["BootSourceOverrideMode"] = mode
        # If-Match "*" as pyghmi does: some BMCs refuse a PATCH without If-Match.
        self._request(doing, "PATCH", None, {"Boot": payload}, **{"If-Match": "*"})
        reported = self._system(doing).get("Boot", {}).get("BootSourceOverrideTarget")
        if reported != target:
            raise BmcError(
                f"BMC {self.target.endpoint} accepted boot device {target} but reports {reported}",
                hint="the BMC may ignore boot overrides while a job or setup is pending; see its "
                "event log",
                code="boot_device_not_confirmed",
            )

    def read_watts(self) -> int | None:
        """The chassis power reading (:mod:`.redfish_meter`): found once, then one GET each."""
        doing = "read the power draw"

        def get(url: str) -> Any:
            return self._request(doing, "GET", url)

        if self._meter is None:
            self._meter = redfish_meter.find(self._system(doing), get)
        url, shape = self._meter
        if not url:
            return None
        try:
            return redfish_meter.watts(get(url), shape)
        except BmcError:
            self._meter = None  # moved or failed: look for it afresh next time
            raise

    def read_identity(self) -> Identity:
        system = self._system("read system identity")
        identity = Identity(
            serial=str(system.get("SerialNumber") or ""),
            vendor=str(system.get("Manufacturer") or ""),
            model=str(system.get("Model") or ""),
            guid=str(system.get("UUID") or "").lower(),
            extra={
                key: str(system[field])
                for key, field in (
                    ("bios_version", "BiosVersion"),
                    ("sku", "SKU"),
                    ("part_number", "PartNumber"),
                    ("system_id", "Id"),
                )
                if system.get(field)
            },
        )
        managers = system.get("Links", {}).get("ManagedBy") or [{}]
        if isinstance(managers[0], dict) and managers[0].get("@odata.id"):
            # The BMC's own firmware and MAC are best effort: not every BMC exposes them.
            try:
                manager = self._request("read BMC identity", "GET", managers[0]["@odata.id"])
                identity.firmware = str(manager.get("FirmwareVersion") or "")
                identity.bmc_mac = self._manager_mac(manager)
            except BmcUnreachable:
                raise
            except (BmcError, AttributeError, KeyError, TypeError, ValueError):
                pass  # a malformed or missing manager leaves firmware and MAC empty
        return identity

    def _manager_mac(self, manager: dict[str, Any]) -> str:
        nics_url = manager.get("EthernetInterfaces", {}).get("@odata.id")
        if not nics_url:
            return ""
        members = self._request("read BMC network", "GET", nics_url).get("Members") or []
        for member in members[:4]:  # bounded: a BMC has one or two
            nic = self._request("read BMC network", "GET", member["@odata.id"])
            mac = nic.get("PermanentMACAddress") or nic.get("MACAddress")
            if mac:
                return normalize_mac(str(mac))
        return ""

    def _drop_session(self) -> None:
        # pyghmi 1.6.19 keeps no session URI, so a session token cannot be deleted;
        # it expires on the BMC. Keeping one Command per driver keeps that to one.
        self._command = None
