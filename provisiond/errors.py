"""The exception tree. Every error an operator can see carries a hint.

ProvisiondError            500 unless a subclass says; code, message, hint
├── ConfigError            500, bad config key or value (start-up)
├── NotFound               404
├── Conflict               409
│   ├── InvalidTransition  event not allowed from the machine's state
│   ├── ConcurrentChange   another writer changed the row first
│   ├── MachineLocked      another operation holds the machine lock
│   ├── OverBudget         powering on would pass the rack's power budget
│   │                      (kept in power_budget; an admin may force it)
│   ├── BmcNotConfigured   the machine has no usable BMC address or password
│   │                      (kept in machines.bmc_access; not a BMC's own failure)
│   └── PduNotConfigured   the PDU has no driver, address or SNMP secret (pdus.access)
├── ValidationFailed       422, with a list of problems (path, line, message)
├── BadRequest             400, a body that cannot be parsed
│   └── DiskImageRefused   not a usable whole-disk image (netboot.disk_convert)
├── Unauthorized           401
│   └── SignInRequired     no console session: the console redirects to its sign-in
│                          (kept in console.auth)
├── Forbidden              403
├── BodyTooLarge           413, a body over its route's limit
├── ClientGone             499, the client disconnected; nobody reads the answer
├── DatabaseNotReady       503, un-migrated schema, or rows that block a migration
├── QuotaExceeded          429, the token holds as many machines as its quota allows
├── CallTimeout            504, a blocking call (BMC, SSH) did not return in time
├── SshError               502, SSH to a booted machine failed
│   ├── HostKeyMismatch    not the host key the machine reported in its callback
│   └── CommandFailed      a command exited non-zero
├── TemplateError          500, a template is missing, misspelt or left the sandbox
├── GuestImageError        500, the virtual rack's guest image cannot be built
│                          (kept in rack.guest_files, the rack's own tooling)
├── DiskImageError         500, the virtual rack's Debian disk image cannot be built
│                          (kept in rack.disk_layout, the rack's own tooling)
├── PduError               502, a PDU failed or refused (kept in drivers.pdu.base)
│   ├── PduFatalError      retrying cannot help
│   │   ├── PduAuthError   SNMPv3 user unknown or key wrong
│   │   ├── PduUnsupported no such outlet or object; a SET refused
│   │   ├── PduBadReply    a malformed SNMP answer, or one for other objects
│   │   └── PduNotConfirmed  switched, but the read-back disagrees
│   └── PduRetryableError  back off and try again
│       └── PduUnreachable no answer (address, port, v2c community, PDU down)
└── BmcError                           502, a BMC failed or refused (drivers/power)
    ├── BmcFatalError                  retrying cannot help
    │   ├── BmcAuthError               credentials rejected
    │   │   └── BmcPrivilegeError      logged in, but the user's role is too low
    │   ├── BmcTlsError                the BMC's TLS identity is not trusted
    │   │   └── BmcCertificateMismatch not the pinned certificate
    │   ├── BmcUnsupported             the BMC cannot do this
    │   └── BmcManualAction            a person must act (``manual`` driver)
    └── BmcRetryableError              back off and try again
        ├── BmcUnreachable             no answer (timeout, BMC resetting)
        ├── BmcBusy                    out of sessions, node busy
        └── BmcSessionError            pyghmi's session broke; log in afresh

A BmcError's ``retryable`` says whether backing off and trying again can help.
Anything else that escapes a driver is a bug, ours or the client library's: it is
not retried, and reaches the API as a 500 with its traceback in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ProvisiondError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, hint: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class ConfigError(ProvisiondError):
    code = "config_invalid"


class NotFound(ProvisiondError):
    status_code = 404
    code = "not_found"


class Conflict(ProvisiondError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class ConcurrentChange(Conflict):
    code = "concurrent_change"


class MachineLocked(Conflict):
    code = "machine_locked"


@dataclass(frozen=True)
class Problem:
    """One offending entry: where it is (path and, for YAML input, line) and why."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}"


class ValidationFailed(ProvisiondError):
    status_code = 422
    code = "validation_failed"

    def __init__(self, problems: list[Problem], *, hint: str = "") -> None:
        first = str(problems[0]) if problems else "invalid input"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more, hint=hint)
        self.problems = problems

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["problems"] = [
            {"path": p.path, "line": p.line, "message": p.message} for p in self.problems
        ]
        return body


class BadRequest(ProvisiondError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ProvisiondError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ProvisiondError):
    status_code = 403
    code = "forbidden"


class BodyTooLarge(ProvisiondError):
    status_code = 413
    code = "payload_too_large"


class ClientGone(ProvisiondError):
    """The client disconnected before its answer: the work stops, and nothing is sent.
    499 is nginx's "client closed request", for logs and metrics only."""

    status_code = 499
    code = "client_gone"


class DatabaseNotReady(ProvisiondError):
    status_code = 503
    code = "database_not_ready"


class QuotaExceeded(ProvisiondError):
    status_code = 429
    code = "quota_exceeded"


class CallTimeout(ProvisiondError):
    """A blocking call (provisiond.executor) outlived its time limit."""

    status_code = 504
    code = "timeout"


class SshError(ProvisiondError):
    status_code = 502
    code = "ssh_error"


class HostKeyMismatch(SshError):
    code = "ssh_host_key_mismatch"


class CommandFailed(SshError):
    code = "ssh_command_failed"


class TemplateError(ProvisiondError):
    code = "template_error"


# -- BMCs (drivers/power re-exports these from base.py) ------------------------------


class BmcError(ProvisiondError):
    status_code = 502
    code = "bmc_error"
    retryable = False


class BmcFatalError(BmcError):
    pass


class BmcAuthError(BmcFatalError):
    code = "bmc_auth_failed"


class BmcPrivilegeError(BmcAuthError):
    """The BMC took the login (or never checked the password) but refuses the user the
    privilege an action needs: a new password will not help, a higher role will."""

    code = "bmc_privilege_insufficient"


class BmcTlsError(BmcFatalError):
    """The BMC's TLS identity cannot be trusted as configured; retrying cannot help."""

    code = "bmc_tls_error"


class BmcCertificateMismatch(BmcTlsError):
    code = "bmc_certificate_mismatch"


class BmcUnsupported(BmcFatalError):
    code = "bmc_unsupported"


class BmcManualAction(BmcFatalError):
    code = "manual_action_required"


class BmcRetryableError(BmcError):
    retryable = True


class BmcUnreachable(BmcRetryableError):
    code = "bmc_unreachable"


class BmcBusy(BmcRetryableError):
    code = "bmc_busy"


class BmcSessionError(BmcRetryableError):
    code = "bmc_session_error"
