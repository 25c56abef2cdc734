"""Rendering the console's pages: one sandboxed, autoescaping Jinja2 environment.

Every value from the database (names, reasons, event messages, tags) is escaped by
autoescape; nothing is marked safe but the SVG this package builds itself (whose own
values are escaped by :mod:`provisiond.console.elevation`). Pages carry a strict
Content-Security-Policy: scripts and styles only from ``/ui/static/``, no inline
script, no framing, forms only to this origin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from starlette.requests import Request
from starlette.responses import HTMLResponse

from provisiond import __version__
from provisiond.console.auth import ConsoleUser

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: Colours by lifecycle state, shared by the SVG elevation and the CSS classes.
STATE_COLOURS = {
    "new": "#9e9e9e",
    "enrolled": "#90a4ae",
    "inspecting": "#4fc3f7",
    "inspect_failed": "#e57373",
    "available": "#81c784",
    "allocated": "#ffd54f",
    "deploying": "#ffb74d",
    "installing_agent": "#ffa726",
    "active": "#4db6ac",
    "deploy_failed": "#e53935",
    "releasing": "#ba68c8",
    "release_failed": "#c62828",
    "maintenance": "#a1887f",
    "retired": "#616161",
}


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``"3m ago"`` / ``"in 12m"``: short, for tables."""
    if when is None:
        return "never"
    now = now or datetime.now(UTC)
    seconds = (when - now).total_seconds()
    future = seconds > 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = f"{int(seconds)}s"
    return f"in {text}" if future else f"{text} ago"


def stamp(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if when else ""


@cache
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html", "svg"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["stamp"] = stamp
    env.globals["state_colours"] = STATE_COLOURS
    env.globals["version"] = __version__
    return env


def page(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    status_code: int = 200,
    flash: tuple[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A whole page, or only its ``<main>`` when the console's script asks for a fragment
    (the live refresh: ``X-Console-Fragment: 1``)."""
    fragment = request.headers.get("x-console-fragment") == "1"
    if flash is None and user is not None and user.flash and not fragment:
        flash = (user.flash_kind or "ok", user.flash)
    html = (
        environment()
        .get_template(template)
        .render(
            user=user,
            path=request.url.path,
            fragment=fragment,
            flash=flash,
            now=datetime.now(UTC),
            **context,
        )
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def error_page(
    request: Request, user: ConsoleUser | None, status_code: int, message: str, hint: str
) -> HTMLResponse:
    return page(
        request,
        "error.html",
        user,
        status_code=status_code,
        message=message,
        hint=hint,
        code=status_code,
    )
