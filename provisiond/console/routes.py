"""The console's routes at ``/ui/``: thin; the views build each page's data.

Reads are plain ``def`` routes (the API lane's threads and database pool); forms are
``async`` routes that read their small urlencoded body, then do their database work in
a thread with a time bound. Errors are pages (:mod:`provisiond.console.errors`), never
JSON or a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlmodel import Session

from provisiond.api.deps import ServicesDep, still_wanted
from provisiond.api.deps import request_id as rid
from provisiond.console import actions, hub, live
from provisiond.console.auth import (
    COOKIE,
    CSRF_FIELD,
    ConsoleUser,
    check_csrf,
    check_origin,
    console_key,
    current_user,
    sign_in,
    sign_out,
    take_flash,
)
from provisiond.console.render import STATIC, page
from provisiond.console.views import lists, machine, machines, overview, racks
from provisiond.container import Services
from provisiond.errors import BadRequest, CallTimeout, NotFound, ProvisiondError
from provisiond.schemas.base import Key

router = APIRouter(prefix="/ui", include_in_schema=False)
T = TypeVar("T")

#: Form work (sign-in, actions) gives up after this long; the page says so.
FORM_TIMEOUT_S = 60.0
#: The only files /ui/static serves: a fixed map, so no path reaches the file system.
STATIC_FILES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


def _user(request: Request, services: ServicesDep) -> ConsoleUser:
    still_wanted(request)
    key = console_key(services.secrets.mac_key)
    with services.db.read_session() as session:
        user = current_user(session, key, request.cookies.get(COOKIE))
    services.token_use.note(user.token)
    whole_page = request.method == "GET" and request.headers.get("x-console-fragment") != "1"
    if user.flash and whole_page and request.url.path != "/ui/live":
        # shown once: this page shows it, the next one does not (a live refresh or the
        # stream itself neither shows nor takes it)
        with services.db.transaction() as session:
            take_flash(session, user)
    request.state.actor = user.actor
    return user


User = Annotated[ConsoleUser, Depends(_user)]


def _render(
    request: Request,
    services: Services,
    user: ConsoleUser,
    template: str,
    build: Callable[[Session], dict[str, Any]],
) -> Response:
    with services.db.read_session() as session:
        context = build(session)
        head = hub.newest_id(session)
    return page(request, template, user, last_event_id=head, **context)


async def _form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if not raw:
        return {}  # nothing sent: the form-token check refuses it (403)
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest(
            f"the console's forms are sent as application/x-www-form-urlencoded, not {kind!r}",
            hint="use the console's pages, or the JSON API under /api/v1",
        )
    body = raw.decode("utf-8", errors="replace")
    fields: dict[str, str] = {}
    try:
        pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise BadRequest(
            "the form has too many fields", hint="use the console's own pages"
        ) from None
    for key, value in pairs:
        if "\x00" in value:
            raise BadRequest(
                f"the form field {key[:32]!r} holds a NUL character",
                hint="remove control characters from what you typed",
            )
        fields.setdefault(key, value)
    return fields


async def _in_thread(fn: Callable[[], T]) -> T:
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn), FORM_TIMEOUT_S)
    except TimeoutError:
        raise CallTimeout(
            f"the database did not answer within {FORM_TIMEOUT_S:.0f} s",
            hint="retry shortly; the daemon may be overloaded",
        ) from None


def _safe_next(target: str) -> str:
    """Only a path in the console: never another site (an open redirect)."""
    if (
        target.startswith("/ui/")
        and "\\" not in target
        and "/../" not in target + "/"
        and all(c.isprintable() for c in target)
    ):
        return target
    return "/ui/"


# --- sign-in ---------------------------------------------------------------------


@router.get("")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=303)


@router.get("/signin")
def signin_page(request: Request, next: str = "/ui/") -> Response:
    return page(request, "signin.html", None, next=_safe_next(next), message="", hint="")


@router.post("/signin")
async def signin(request: Request, services: ServicesDep) -> Response:
    # another site's form must not sign this browser in as someone else (login CSRF)
    check_origin(request.headers, services.settings.console_origins)
    fields = await _form(request)
    target = _safe_next(fields.get("next", "/ui/"))
    key = console_key(services.secrets.mac_key)
    ttl = services.settings.console_session_ttl_s

    def work() -> str:
        with services.db.transaction() as session:
            cookie, _token = sign_in(
                session,
                key,
                fields.get("token", ""),
                services.token_use,
                ttl_s=ttl,
                request_id=rid(request),
            )
        return cookie

    try:
        cookie = await _in_thread(work)
    except ProvisiondError as exc:
        # the API's own message and hint (unknown, malformed, expired); the token is
        # neither echoed nor logged
        return page(
            request,
            "signin.html",
            None,
            status_code=exc.status_code,
            next=target,
            message=exc.message,
            hint=exc.hint,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=ttl,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def signout(request: Request, services: ServicesDep, user: User) -> Response:
    fields = await _form(request)
    check_csrf(user, fields.get(CSRF_FIELD), request.headers, services.settings.console_origins)

    def work() -> None:
        with services.db.transaction() as session:
            sign_out(session, user, request_id=rid(request))

    await _in_thread(work)
    response = RedirectResponse("/ui/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# --- static files and the live stream --------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    kind = STATIC_FILES.get(name)
    if kind is None:
        raise NotFound(f"no console file named {name[:64]!r}", hint="see /ui/")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=kind,
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/live")
async def live_stream(
    request: Request,
    services: ServicesDep,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> StreamingResponse:
    """Server-sent events (:mod:`provisiond.console.live`): ``change`` for each new
    event row, ``reload`` when a page fell behind, ``signed_out`` when the session ends.
    Bounded in time; the browser's EventSource reconnects from the last id it saw."""
    user = await _in_thread(lambda: _user(request, services))
    resume = request.headers.get("last-event-id", "")
    start = int(resume) if resume.isascii() and resume.isdigit() and len(resume) < 19 else since
    return StreamingResponse(
        live.stream(services, request, user, since=start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# --- pages -----------------------------------------------------------------------


@router.get("/")
def overview_page(request: Request, services: ServicesDep, user: User) -> Response:
    return _render(request, services, user, "overview.html", lambda s: overview.build(s, user))


@router.get("/racks")
def racks_page(request: Request, services: ServicesDep, user: User) -> Response:
    return _render(request, services, user, "racks.html", lambda s: racks.build(s, user, None))


@router.get("/racks/{name:path}")
def rack_page(name: Key, request: Request, services: ServicesDep, user: User) -> Response:
    return _render(request, services, user, "racks.html", lambda s: racks.build(s, user, name))


@router.get("/machines")
def machines_page(
    request: Request,
    services: ServicesDep,
    user: User,
    state: str = "",
    rack: str = "",
    tag: str = "",
    arch: str = "",
    q: str = "",
    sort: str = "name",
    order: str = "asc",
    page_number: Annotated[str, Query(alias="page")] = "1",
) -> Response:
    params = machines.Params.parse(
        state=state, rack=rack, tag=tag, arch=arch, q=q, sort=sort, order=order, page=page_number
    )
    return _render(
        request, services, user, "machines.html", lambda s: machines.build(s, user, params)
    )


@router.get("/machines/{name}")
def machine_page(name: Key, request: Request, services: ServicesDep, user: User) -> Response:
    return _render(request, services, user, "machine.html", lambda s: machine.build(s, user, name))


@router.get("/allocations")
def allocations_page(
    request: Request, services: ServicesDep, user: User, state: str = ""
) -> Response:
    return _render(
        request, services, user, "allocations.html", lambda s: lists.allocations(s, user, state)
    )


@router.get("/images")
def images_page(request: Request, services: ServicesDep, user: User) -> Response:
    return _render(request, services, user, "images.html", lambda s: lists.images(s, user))


# --- actions ---------------------------------------------------------------------


@router.get("/machines/{name}/actions/{action}")
def confirm_action(
    name: Key, action: str, request: Request, services: ServicesDep, user: User
) -> Response:
    spec = actions.lookup(action)
    actions.require_operator(user)
    with services.db.read_session() as session:
        machine.ensure_exists(session, name)
    return page(
        request,
        "confirm.html",
        user,
        action=spec,
        machine=name,
        href=f"/ui/machines/{quote(name, safe='')}",
    )


@router.post("/machines/{name}/actions/{action}")
async def run_action(
    name: Key, action: str, request: Request, services: ServicesDep, user: User
) -> Response:
    fields = await _form(request)
    check_csrf(user, fields.get(CSRF_FIELD), request.headers, services.settings.console_origins)
    spec = actions.lookup(action)
    actions.require_operator(user)
    await actions.run(
        services,
        user,
        spec,
        name,
        reason=fields.get("reason", "")[:255],
        request_id=rid(request),
    )
    return RedirectResponse(f"/ui/machines/{quote(name, safe='')}", status_code=303)
