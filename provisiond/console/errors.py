"""Errors under ``/ui/`` are pages: a message and a hint, or the sign-in page."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from provisiond.console.render import error_page


def is_console(request: Request) -> bool:
    path = request.url.path
    return path == "/ui" or path.startswith("/ui/")


def console_error(request: Request, status: int, code: str, message: str, hint: str) -> Response:
    """The console's answer for an error the app's handlers caught."""
    if code == "sign_in_required":
        if request.headers.get("x-console-fragment") == "1" or request.url.path == "/ui/live":
            return Response(status_code=401)  # the page's script reloads into the sign-in
        target = request.url.path
        if request.method == "GET" and request.url.query:
            target += "?" + request.url.query
        return RedirectResponse("/ui/signin?next=" + quote(target, safe="/"), status_code=303)
    return error_page(request, None, status, message, hint)
