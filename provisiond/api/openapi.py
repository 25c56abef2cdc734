"""The error responses every route can give, in the OpenAPI document.

FastAPI documents only the success answer and 422, so generated clients knew nothing of
401, 403, 404, 409, 413, 429 or 503. :func:`document_errors` adds them per route from
what the route is (authenticated, has path parameters, changes state, takes a body),
with the one error shape every answer uses: ``{"error": {"code", "message", "hint"}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from pydantic import BaseModel


class ErrorProblem(BaseModel):
    path: str
    line: int | None = None
    message: str


class ErrorDetail(BaseModel):
    #: A stable, machine-readable code, e.g. ``not_found``, ``overloaded``.
    code: str
    message: str
    #: What to do about it.
    hint: str
    #: Validation problems, one per offending field (422 only).
    problems: list[ErrorProblem] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "The body cannot be parsed (not JSON/YAML, nested too deeply, not UTF-8)",
    401: "No bearer token, or an unknown, revoked or expired one",
    403: "The token's role may not do this",
    404: "No such object",
    409: "Conflicts with the current state (a name in use, a machine locked or busy)",
    413: "The body is over this route's limit",
    422: "The request does not match the schema; `problems` lists each field",
    429: "The token's quota is used up",
    503: "Overloaded or the database is busy: retry after the Retry-After header's seconds",
}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _codes(route: APIRoute) -> set[int]:
    path = route.path
    methods = route.methods or set()
    codes = {503}
    if path.startswith("/api/v1/") or path.startswith("/boot/callback"):
        codes |= {401, 422}
        if not path.startswith("/api/v1/agent/") and not path.startswith("/boot/"):
            codes.add(403)
    if "{" in path:
        codes.add(404)
    if methods & _WRITES:
        codes |= {409, 413, 400} if methods - {"DELETE"} else {409}
    if path == "/api/v1/allocations" and "POST" in methods:
        codes.add(429)
    return codes


def document_errors(router: APIRouter) -> None:
    """Add the error answers to the OpenAPI entry of every route of ``router`` (before
    it is included in the app)."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or route.path in ("/healthz", "/metrics"):
            continue
        extra: dict[int | str, dict[str, Any]] = {
            code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
            for code in sorted(_codes(route))
            if code not in route.responses
        }
        route.responses = {**route.responses, **extra}
        for code in extra:  # what FastAPI builds from `responses` when a route is made
            route.response_fields[code] = create_model_field(
                name=f"Response_{code}_{route.unique_id}", type_=ErrorBody, mode="serialization"
            )
