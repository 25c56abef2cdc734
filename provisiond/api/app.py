"""The app factory: error handlers, request ids, and the router list."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisiond import __version__
from provisiond.api.admission import Admission, Limits
from provisiond.api.openapi import document_errors
from provisiond.api.routers import BOOT_ROUTES, ROUTERS
from provisiond.console.errors import console_error, is_console
from provisiond.console.routes import router as console_router
from provisiond.container import Services
from provisiond.errors import ClientGone, ProvisiondError
from provisiond.logging import get_logger

log = get_logger(__name__)


def _error(status: int, code: str, message: str, hint: str = "", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "hint": hint, **extra}
    return JSONResponse({"error": body}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        problems.append({"path": ".".join(loc), "line": None, "message": err.get("msg", "")})
    first = problems[0] if problems else {"path": "", "message": "invalid request"}
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{first['path']}: {first['message']}{more}", problems


#: A CHECK constraint's name in SQLite's and PostgreSQL's messages.
_CHECK = re.compile(r'(?:CHECK constraint failed: |violates check constraint ")(\w+)')

#: FastAPI's own HTTP errors, in the codes our errors use.
_HTTP_CODES = {
    400: ("bad_request", "check the request body against /docs"),
    404: ("not_found", "see /docs for the routes"),
    405: ("method_not_allowed", "see /docs for the routes and their methods"),
}


def _answer(req: Request, status: int, code: str, message: str, hint: str = "") -> Response:
    """An error as the client reads it: a page under /ui/, else the API's JSON."""
    if is_console(req):
        return console_error(req, status, code, message, hint)
    return _error(status, code, message, hint)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProvisiondError)
    async def _provisiond(req: Request, exc: ProvisiondError) -> Response:
        if is_console(req):
            return console_error(req, exc.status_code, exc.code, exc.message, exc.hint)
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError) -> Response:
        message, problems = _describe_validation(exc)
        if is_console(req):
            return console_error(req, 422, "validation_failed", message, "check the address")
        return _error(
            422,
            "validation_failed",
            message,
            "see /docs for the request schema",
            problems=problems,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's own refusals: unknown routes, wrong methods, bodies it cannot parse
        code, hint = _HTTP_CODES.get(exc.status_code, (f"http_{exc.status_code}", ""))
        if is_console(req):
            return console_error(req, exc.status_code, code, str(exc.detail), "see /ui/")
        return _error(exc.status_code, code, str(exc.detail), hint)

    @app.exception_handler(ClientDisconnect)
    async def _gone(req: Request, _exc: ClientDisconnect) -> Response:
        # an ordinary event, not an error: nobody is left to read an answer (or
        # admission already answered 413 for a body over its limit)
        if not req.scope.get("state", {}).get("body_refused"):
            log.info("client_disconnected", path=req.url.path, during="request body")
        return JSONResponse(
            {"error": ClientGone("the client went away mid-request").to_dict()}, 499
        )

    @app.exception_handler(RecursionError)
    async def _nested(req: Request, _exc: RecursionError) -> Response:
        log.info("request_nested_too_deeply", path=req.url.path)
        return _answer(
            req,
            400,
            "bad_request",
            "the request is nested too deeply to parse",
            "send plain, shallow JSON or YAML (see /docs for the schema)",
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(req: Request, exc: IntegrityError) -> Response:
        log.info("integrity_error", error=str(exc.orig))
        check = _CHECK.search(str(exc.orig))
        if check:  # a value the schema let through but a CHECK constraint refused
            return _answer(
                req,
                422,
                "validation_failed",
                f"a value is out of range (constraint {check.group(1)})",
                "check the ranges in /docs",
            )
        return _answer(
            req,
            409,
            "conflict",
            "the change conflicts with existing data (a name, MAC or reference already in use)",
            "read the current object and retry with unique values",
        )

    @app.exception_handler(DataError)
    async def _data(req: Request, exc: DataError) -> Response:
        log.info("data_error", error=str(exc.orig))
        return _answer(
            req,
            422,
            "validation_failed",
            "a value does not fit its column (too long, too large, or malformed)",
            "check the lengths and ranges in /docs",
        )

    @app.exception_handler(OperationalError)
    async def _operational(req: Request, exc: OperationalError) -> Response:
        log.error("database_error", error=str(exc.orig))
        return _answer(
            req, 503, "database_unavailable", "the database did not answer", "retry shortly"
        )

    @app.exception_handler(sqlite3.OperationalError)
    async def _sqlite_busy(req: Request, exc: sqlite3.OperationalError) -> Response:
        # raised by the write-slot gate in a begin event, which SQLAlchemy does not wrap
        log.error("database_error", error=str(exc))
        return _answer(req, 503, "database_busy", "the database is busy", "retry shortly")

    @app.exception_handler(PoolTimeout)
    async def _pool(req: Request, exc: PoolTimeout) -> Response:
        log.error("database_pool_exhausted", error=str(exc))
        return _answer(
            req, 503, "database_busy", "no database connection was free in time", "retry shortly"
        )

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", path=req.url.path)
        return _answer(
            req,
            500,
            "internal",
            "an internal error occurred",
            f"report it with request id {getattr(req.state, 'request_id', '')}",
        )


#: A client's X-Request-ID is kept only when it is a plain token (it lands in the audit log).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-ID``, else a new one), in
    ``request.state.request_id`` and in the response's ``X-Request-ID`` header.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs each request
    in an extra task behind memory streams (measured: most of the framework's cost per
    API call here)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not _REQUEST_ID.fullmatch(rid):  # absent or not a plain token: ours instead
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", ()) if h[0].lower() != header[0]]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="provisiond",
        version=__version__,
        description="Bare-metal provisioning: inventory, lifecycle, allocation.",
    )
    app.state.services = services
    install_error_handlers(app)

    settings = services.settings
    limits = Limits(
        api=settings.api_max_in_flight,
        watch=settings.watch_max_in_flight,
        boot=settings.boot_max_in_flight,
        files=settings.files_max_in_flight,
    )
    # Added first, so it runs inside the request ids: a 503 still carries its id.
    app.add_middleware(Admission, limits=limits, metrics=services.metrics)
    app.add_middleware(RequestIdMiddleware)
    for router in ROUTERS:
        document_errors(router)
        app.include_router(router)
    app.include_router(console_router)  # HTML pages: no JSON error schema to document
    return app


class BootOnly:
    """What a provisioning network's boot listener serves: the boot routes of ``app``
    (:data:`provisiond.api.routers.BOOT_ROUTES`), and 404 for anything else.

    Every machine being booted reaches that listener, so the admin API, /docs and
    /metrics must not be there. The daemon serves it with a uvicorn server of its own,
    so which listener took a request is known by construction rather than guessed
    from addresses (``scope["server"]`` is the local address, which a netns listener
    may share with a host one). What it lets through goes to the very app the main
    listener serves: one admission middleware bounds both listeners (a second app
    would have its own bounds, doubling ``boot_max_in_flight``), with the same error
    handlers. A boot route whose path matches takes the request whatever its
    method, so a wrong method still gets the route's 405.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = BOOT_ROUTES) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or any(
            route.matches(scope)[0] is not Match.NONE for route in self.routes
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = _error(
            404,
            "not_found",
            f"{scope.get('path', '')[:200]} is not served on a provisioning network",
            "this listener serves only /boot, /meta, /images, /api/v1/agent and /healthz; "
            "use the daemon's main listener for the API",
        )
        await response(scope, receive, send)
