"""The error the API client raises: the server's code, message, hint and problems."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer from the API (or ``status`` 0 when it could not be reached).

    ``problems`` lists offending entries for validation errors: dicts with
    ``path``, ``line`` (for YAML input) and ``message``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.problems = problems or []
