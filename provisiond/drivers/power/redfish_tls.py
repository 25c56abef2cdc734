"""How provisiond trusts a Redfish BMC's TLS certificate, and how an operator reads it.

A BMC's certificate is pinned by the SHA-256 fingerprint of its DER encoding. It is
written as openssl prints it (``sha256:AB:CD:..``), and read in the usual spellings:
that form, openssl's own ``sha256 Fingerprint=AB:CD:..``, or 64 hex digits with or
without colons. The alternative is ``tls_verify=system``: the system CA store plus a
hostname check. There is no "insecure" choice.

:func:`fetch_certificate` is how an operator gets the fingerprint to pin
(``provisiond machines bmc-cert``): it completes a TLS handshake *without*
verifying, reads the certificate the BMC presents and sends nothing else, no
credentials and no request. It blocks; callers run it in the executor.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509

from provisiond.drivers.power.base import BmcTarget, BmcTlsError, BmcUnreachable

TLS_VERIFY_CHOICES = ("fingerprint", "system")


def normalize_fingerprint(value: str) -> str:
    """``sha256:AB:CD..``, ``SHA256 Fingerprint=AB:CD..`` or hex -> 64 lowercase hex digits."""
    text = value.strip().lower()
    if "=" in text:  # openssl x509 -fingerprint prints "sha256 Fingerprint=AB:CD:.."
        text = text.split("=", 1)[1]
    text = text.removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        # The value is not echoed: under a BMC it could be a password in the wrong field.
        got = f"{len(text)} digits" if len(text) != 64 else "a character that is not hex"
        raise ValueError(
            "not a SHA-256 fingerprint: expected 64 hex digits, with or without colons, "
            f"e.g. sha256:AB:CD:...:EF as openssl prints it (got {got})"
        )
    return text


def format_fingerprint(hexdigits: str) -> str:
    """64 hex digits -> ``sha256:AB:CD:..``, the way openssl prints it, easy to compare."""
    pairs = [hexdigits[i : i + 2].upper() for i in range(0, len(hexdigits), 2)]
    return "sha256:" + ":".join(pairs)


def canonical_fingerprint(value: str) -> str:
    """The stored form of a pin: ``sha256:AB:..``; "" stays "" (no pin). Raises ValueError."""
    return format_fingerprint(normalize_fingerprint(value)) if value.strip() else ""


def openssl_command(target: BmcTarget) -> str:
    """The one-liner that prints a BMC's certificate fingerprint the way we take it."""
    host = f"[{target.address}]" if ":" in target.address else target.address
    return (
        f"openssl s_client -connect {host}:{target.port} </dev/null 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256"
    )


PIN_HINT = (
    "run `provisiond machines bmc-cert MACHINE` to see the certificate the BMC presents, "
    "check its fingerprint against the BMC's own web UI or console, then pin it with "
    "`provisiond machines bmc-cert MACHINE --pin`"
)


def fingerprint_hint(target: BmcTarget) -> str:
    return (
        f"{PIN_HINT} (or get it with `{openssl_command(target)}` and set the BMC's "
        "cert_fingerprint); or set tls_verify=system if the BMC's certificate is signed by "
        "a CA in the system store"
    )


def make_verifier(target: BmcTarget) -> Callable[[bytes], bool] | None:
    """The pinning callback for pyghmi, or None for the system CA store; refuse anything else."""
    where = target.endpoint
    pinned = target.options.get("cert_fingerprint", "").strip()
    mode = (target.options.get("tls_verify") or "fingerprint").strip().lower()
    if pinned:
        # A pin always wins over tls_verify=system: it names exactly one certificate.
        try:
            expected = normalize_fingerprint(pinned)
        except ValueError:
            raise BmcTlsError(
                f"the cert_fingerprint of BMC {where} is not a SHA-256 fingerprint",
                hint=fingerprint_hint(target),
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
        hint=fingerprint_hint(target),
        code="bmc_tls_not_configured",
    )


@dataclass(frozen=True)
class PresentedCertificate:
    """What a BMC's TLS endpoint presented, for an operator to confirm."""

    fingerprint: str  # sha256:AB:CD:..
    subject: str
    issuer: str
    not_before: str  # ISO 8601, UTC
    not_after: str
    self_signed: bool
    names: list[str]  # subject alternative names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(der: bytes) -> PresentedCertificate:
    fingerprint = format_fingerprint(hashlib.sha256(der).hexdigest())
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:  # a certificate we cannot parse still has a fingerprint
        return PresentedCertificate(fingerprint, "", "", "", "", False, [])
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in alt][:16]
    except (x509.ExtensionNotFound, ValueError):
        names = []
    return PresentedCertificate(
        fingerprint=fingerprint,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        self_signed=cert.subject == cert.issuer,
        names=names,
    )


def fetch_certificate(address: str, port: int, *, timeout: float) -> PresentedCertificate:
    """Read the certificate ``address:port`` presents; nothing is sent but the handshake."""
    where = f"{address}:{port}"
    context = ssl.create_default_context()
    # Unverified on purpose: this only reads what is presented, for a person to check.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            with context.wrap_socket(raw, server_hostname=address) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise BmcUnreachable(
            f"BMC {where} answered, but no TLS handshake was possible: {exc.reason or exc}",
            hint="check the port: it must be the BMC's HTTPS (Redfish) port, usually 443",
        ) from None
    except OSError as exc:
        raise BmcUnreachable(
            f"no TLS answer from BMC {where} within {timeout:g}s: {exc or type(exc).__name__}",
            hint="check the address and HTTPS port, and that the BMC is powered and its "
            "Redfish service is enabled",
        ) from None
    if not der:
        raise BmcTlsError(
            f"BMC {where} presented no certificate",
            hint="this endpoint does not look like a Redfish HTTPS service",
        )
    return _describe(der)
