"""The ``redfish`` driver: DMTF Redfish over HTTPS through pyghmi, with the certificate pinned.

TLS is never switched off silently. The BMC's certificate is pinned by the SHA-256
fingerprint of its DER encoding (``options["cert_fingerprint"]``, as
``sha256:AB:CD:..``, openssl's ``sha256 Fingerprint=AB:CD:..`` or plain hex),
checked through pyghmi's ``verifycallback`` on every connection, before any
credentials are sent. Without a fingerprint the driver refuses, unless the
operator chose ``options["tls_verify"] = "system"`` (the system CA store plus a
hostname check, pyghmi's default path). There is no "insecure" setting.

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

import hashlib
import hmac
import http.client
import json
import ssl
from collections.abc import Callable
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.redfish import command as redfish_command
from pyghmi.util import webclient

from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcError,
    BmcFatalError,
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


class BmcTlsError(BmcFatalError):
    """The BMC's TLS identity cannot be trusted as configured; retrying cannot help."""

    code = "bmc_tls_error"


class BmcCertificateMismatch(BmcTlsError):
    code = "bmc_certificate_mismatch"


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


def normalize_fingerprint(value: str) -> str:
    """``sha256:AB:CD..``, ``SHA256 Fingerprint=AB:CD..`` or hex -> 64 lowercase hex digits."""
    text = value.strip().lower()
    if "=" in text:  # openssl x509 -fingerprint prints "sha256 Fingerprint=AB:CD:.."
        text = text.split("=", 1)[1]
    text = text.removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{value!r} is not a SHA-256 fingerprint")
    return text


def format_fingerprint(hexdigits: str) -> str:
    """64 hex digits -> ``sha256:AB:CD:..``, the way openssl prints it, easy to compare."""
    pairs = [hexdigits[i : i + 2].upper() for i in range(0, len(hexdigits), 2)]
    return "sha256:" + ":".join(pairs)


def openssl_command(target: BmcTarget) -> str:
    """The one-liner that prints a BMC's certificate fingerprint the way we take it."""
    host = f"[{target.address}]" if ":" in target.address else target.address
    return (
        f"openssl s_client -connect {host}:{target.port} </dev/null 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256"
    )


def fingerprint_hint(target: BmcTarget) -> str:
    return (
        f"get the certificate fingerprint with `{openssl_command(target)}`, check it against "
        "the BMC's own web UI or console, and set it as the BMC's cert_fingerprint option; "
        "or set tls_verify=system if the BMC's certificate is signed by a CA in the system store"
    )


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

    def __init__(self, target: BmcTarget) -> None:
        super().__init__(target)
        self._command: Any = None

    # -- errors ---------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Drop the password from text a BMC or library produced; cut it to a sane size."""
        if self.target.password:
            text = text.replace(self.target.password, "***")
        return text[:300]

    def _classify(self, exc: BaseException, doing: str) -> BmcError:
        """Map a transport or pyghmi failure to an error an operator can act on."""
        where = self.target.endpoint
        if isinstance(exc, BmcError):
            return exc
        if isinstance(exc, pyghmi_exc.UnrecognizedCertificate):
            presented = hashlib.sha256(exc.certdata or b"").hexdigest()
            pinned = normalize_fingerprint(self.target.options.get("cert_fingerprint", ""))
            return BmcCertificateMismatch(
                f"BMC {where} presented TLS certificate {format_fingerprint(presented)}, "
                f"which does not match the pinned {format_fingerprint(pinned)}",
                hint="the connection may be intercepted, or the BMC's certificate was replaced "
                "(firmware update, reset to defaults). Only if you can confirm the latter out "
                f"of band, get the new fingerprint with `{openssl_command(self.target)}` and "
                "update the BMC's cert_fingerprint option",
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return BmcTlsError(
                f"the TLS certificate of BMC {where} failed verification against the system "
                f"CA store: {self._scrub(exc.verify_message or str(exc))}",
                hint="BMCs usually have self-signed certificates; pin it instead: "
                + fingerprint_hint(self.target),
            )
        if isinstance(exc, OSError | http.client.HTTPException):
            # ssl.SSLError is an OSError too: a failed handshake is usually a wrong port.
            return BmcUnreachable(
                f"no answer from BMC {where} while trying to {doing}: "
                f"{self._scrub(str(exc) or type(exc).__name__)}",
                hint="check the address and HTTPS port, and that the BMC is powered and its "
                "Redfish service is enabled",
            )
        text = self._scrub(str(exc))
        if "access denied" in text.lower():  # pyghmi's constructor on a 401
            return self._auth_error(401, doing)
        return BmcError(f"BMC {where} failed to {doing}: {text}", hint="see the BMC's event log")

    def _auth_error(self, status: int, doing: str) -> BmcAuthError:
        where = self.target.endpoint
        if status == 403:
            return BmcAuthError(
                f"Redfish user {self.target.username!r} may not {doing} on {where} (HTTP 403)",
                hint=f"give the user in {self.target.credential_source} the Operator or "
                "Administrator role on the BMC",
            )
        return BmcAuthError(
            f"Redfish login rejected by {where} (HTTP {status}) while trying to {doing}",
            hint=f"check the username and password in {self.target.credential_source}",
        )

    def _http_error(self, status: int, body: Any, doing: str, url: str) -> BmcError:
        where = self.target.endpoint
        detail = self._scrub(_redfish_message(body))
        if status in (401, 403):
            return self._auth_error(status, doing)
        if status in (404, 405, 501):
            return BmcUnsupported(
                f"BMC {where} cannot {doing}: HTTP {status} for {url} {detail}".rstrip(),
                hint="this BMC does not offer that resource or action over Redfish; check the "
                "'system' option, the BMC firmware, or use the ipmi driver",
            )
        if status == 400:
            return BmcUnsupported(
                f"BMC {where} refused to {doing}: HTTP 400 {detail}".rstrip(),
                hint="the BMC rejected the request as invalid for this machine (for example a "
                "boot mode it does not support)",
            )
        if status in (409, 429) or status >= 500:
            return BmcBusy(
                f"BMC {where} is busy while trying to {doing}: HTTP {status} {detail}".rstrip(),
                hint="the BMC is busy (a running job, a reset, or too many sessions); "
                "it clears by itself",
            )
        return BmcError(
            f"BMC {where} failed to {doing}: HTTP {status} {detail}".rstrip(),
            hint="see the BMC's event log",
        )

    # -- connection -----------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        try:
            return max(0.5, float(self.target.options.get("timeout") or 10))
        except ValueError:
            return 10.0

    def _verifier(self) -> Callable[[bytes], bool] | None:
        """The pinning callback, or None for the system CA store; refuse anything else."""
        where = self.target.endpoint
        pinned = self.target.options.get("cert_fingerprint", "").strip()
        mode = (self.target.options.get("tls_verify") or "fingerprint").strip().lower()
        if pinned:
            # A pin always wins over tls_verify=system: it names exactly one certificate.
            try:
                expected = normalize_fingerprint(pinned)
            except ValueError:
                raise BmcTlsError(
                    f"the cert_fingerprint of BMC {where} is not a SHA-256 fingerprint",
                    hint=fingerprint_hint(self.target),
                    code="bmc_tls_not_configured",
                ) from None

            def verify(der: bytes) -> bool:
                return hmac.compare_digest(hashlib.sha256(der).hexdigest(), expected)

            return verify
        if mode == "system":
            return None  # pyghmi then verifies the chain and the hostname
        if mode != "fingerprint":
            raise BmcTlsError(
                f"tls_verify={mode!r} for BMC {where} is not supported",
                hint="use tls_verify=fingerprint with cert_fingerprint set, or tls_verify=system; "
                "TLS verification cannot be switched off",
                code="bmc_tls_not_configured",
            )
        raise BmcTlsError(
            f"no TLS certificate fingerprint is configured for Redfish BMC {where}, and "
            "provisiond does not connect to a BMC it cannot verify",
            hint=fingerprint_hint(self.target),
            code="bmc_tls_not_configured",
        )

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
        verify = self._verifier()
        # A probe with our timeout and the status kept: pyghmi's constructor waits 60 s
        # per request and reports a 503 or a 404 only as "Redfish not ready".
        try:
            body, status = self._web(verify).grab_json_response_with_status("/redfish/v1/Systems")
        except Exception as exc:
            raise self._classify(exc, doing) from None
        if body == "Target Unavailable":
            raise self._classify(ConnectionResetError("connection dropped"), doing)
        if not 200 <= status < 300:
            raise self._http_error(status, body, doing, "/redfish/v1/Systems")
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
            raise self._classify(exc, doing) from None
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
                error = self._classify(exc, doing)
                if isinstance(error, BmcUnreachable):
                    self._command = None  # broken: the next call connects afresh
                raise error from None
            if result == "Target Unavailable":  # pyghmi's stand-in for a dropped connection
                self._command = None
                raise self._classify(ConnectionResetError("connection dropped"), doing)
            if status == 401 and command.xauthtoken and attempt == 0:
                self._command = None  # the session expired: log in again, once
                continue
            if not 200 <= status < 300:
                if status == 404 and path == command.sysurl:
                    self._command = None  # the system may have been renumbered: rediscover it
                raise self._http_error(status, result, doing, path)
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

    def close(self) -> None:
        # pyghmi 1.6.19 keeps no session URI, so a session token cannot be deleted;
        # it expires on the BMC. Keeping one Command per driver keeps that to one.
        self._command = None


def _redfish_message(body: Any) -> str:
    """The human part of a Redfish error body, if there is one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return f"({body.strip()[:200]})" if body.strip() else ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error", {})
    if not isinstance(error, dict):
        return ""
    messages = [
        str(info.get("Message") or "")
        for info in error.get("@Message.ExtendedInfo", [])
        if isinstance(info, dict)
    ]
    text = "; ".join(m for m in [str(error.get("message") or ""), *messages] if m)
    return f"({text})" if text else ""
