"""How the ``redfish`` driver turns transport, TLS and HTTP failures into errors with hints.

pyghmi 1.6.19 reports every non-2xx as ``RedfishError`` with the MessageIds only,
so the driver keeps the HTTP status and maps it here: 401 is a bad password, 403 a
user without the role (``BmcPrivilegeError``), 404/405/501 unsupported,
409/429/5xx busy (retryable). Text from the BMC or the library is scrubbed of the
password before it reaches a message.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from typing import Any

from pyghmi import exceptions as pyghmi_exc

from provisiond.drivers.power.base import (
    BmcAuthError,
    BmcBusy,
    BmcCertificateMismatch,
    BmcError,
    BmcPrivilegeError,
    BmcTarget,
    BmcTlsError,
    BmcUnreachable,
    BmcUnsupported,
)
from provisiond.drivers.power.redfish_tls import (
    PIN_HINT,
    fingerprint_hint,
    format_fingerprint,
    normalize_fingerprint,
    openssl_command,
)


def scrub(target: BmcTarget, text: str) -> str:
    """Drop the password from text a BMC or library produced; cut it to a sane size."""
    if target.password:
        text = text.replace(target.password, "***")
    return text[:300]


def classify(target: BmcTarget, exc: BaseException, doing: str) -> BmcError:
    """Map a transport or pyghmi failure to an error an operator can act on."""
    where = target.endpoint
    if isinstance(exc, BmcError):
        return exc
    if isinstance(exc, pyghmi_exc.UnrecognizedCertificate):
        presented = hashlib.sha256(exc.certdata or b"").hexdigest()
        pinned = normalize_fingerprint(target.options.get("cert_fingerprint", ""))
        return BmcCertificateMismatch(
            f"BMC {where} presented TLS certificate {format_fingerprint(presented)}, "
            f"which does not match the pinned {format_fingerprint(pinned)}",
            hint="the connection may be intercepted, or the BMC's certificate was replaced "
            "(firmware update, reset to defaults). Only if you can confirm the latter out "
            "of band: " + PIN_HINT + f" (or compare with `{openssl_command(target)}`)",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BmcTlsError(
            f"the TLS certificate of BMC {where} failed verification against the system "
            f"CA store: {scrub(target, exc.verify_message or str(exc))}",
            hint="BMCs usually have self-signed certificates; pin it instead: "
            + fingerprint_hint(target),
        )
    if isinstance(exc, OSError | http.client.HTTPException):
        # ssl.SSLError is an OSError too: a failed handshake is usually a wrong port.
        return BmcUnreachable(
            f"no answer from BMC {where} while trying to {doing}: "
            f"{scrub(target, str(exc) or type(exc).__name__)}",
            hint="check the address and HTTPS port, and that the BMC is powered and its "
            "Redfish service is enabled",
        )
    text = scrub(target, str(exc))
    if "access denied" in text.lower():  # pyghmi's constructor on a 401
        return auth_error(target, 401, doing)
    return BmcError(f"BMC {where} failed to {doing}: {text}", hint="see the BMC's event log")


def auth_error(target: BmcTarget, status: int, doing: str) -> BmcAuthError:
    where = target.endpoint
    if status == 403:
        return BmcPrivilegeError(
            f"Redfish user {target.username!r} may not {doing} on {where} (HTTP 403)",
            hint=f"give the user in {target.credential_source} the Operator or "
            "Administrator role on the BMC",
        )
    return BmcAuthError(
        f"Redfish login rejected by {where} (HTTP {status}) while trying to {doing}",
        hint=f"check the username and password in {target.credential_source}",
    )


def http_error(target: BmcTarget, status: int, body: Any, doing: str, url: str) -> BmcError:
    where = target.endpoint
    detail = scrub(target, redfish_message(body))
    if status in (401, 403):
        return auth_error(target, status, doing)
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


def redfish_message(body: Any) -> str:
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
