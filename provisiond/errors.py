"""The exception tree. Every error an operator can see carries a hint.

ProvisiondError            code, message, hint, http status
├── ConfigError            bad config key or value (start-up)
├── NotFound               404
├── Conflict               409
│   ├── InvalidTransition  event not allowed from the machine's state
│   ├── ConcurrentChange   another writer changed the row first
│   └── MachineLocked      another operation holds the machine lock
├── ValidationFailed       422, with a list of problems (path, line, message)
├── BadRequest             400, a body that cannot be parsed
├── Unauthorized           401
├── Forbidden              403
├── BodyTooLarge           413, a body over its route's limit
├── ClientGone             the client disconnected; nobody reads the answer
└── DatabaseNotReady       503, un-migrated schema
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
