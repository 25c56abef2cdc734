"""Console sign-in: an API token becomes a signed, HttpOnly, SameSite=Strict cookie.

The operator pastes an API token into the sign-in form (a POST body: never a URL, a
log line or a page). It is checked exactly as the API checks a bearer token
(:func:`provisiond.auth.authenticate`), and a :class:`~provisiond.models.ConsoleSession`
row is made for it. The cookie holds a random id and an HMAC of it under a key derived
from the daemon's secret key:

- a cookie that was not made here fails the HMAC before any database read;
- only the id's SHA-256 is stored, so a database dump signs nobody in;
- signing out deletes the row, so a copied cookie stops working at once;
- the token the session was made from is re-checked on every request: a revoked
  token (its row and, by cascade, its sessions are deleted) or an expired one ends
  every session made from it, and its role is read afresh.

Every form carries the session's synchronizer token (``csrf``), compared in constant
time; SameSite=Strict and an ``Origin`` check (when the browser sends one) are a
second and a third wall.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from provisiond.auth import Role, TokenUse, authenticate
from provisiond.errors import Forbidden, Unauthorized
from provisiond.events import audit
from provisiond.models import ApiToken, ConsoleSession, utcnow

COOKIE = "provisiond_console"
#: The form field every console action carries.
CSRF_FIELD = "csrf"


class SignInRequired(Unauthorized):
    """No valid session: the console answers with a redirect to the sign-in page."""

    code = "sign_in_required"


@dataclass(frozen=True)
class ConsoleUser:
    """Who is looking at the console, as read for this request."""

    session_id: int
    token: ApiToken
    csrf: str
    flash: str
    flash_kind: str

    @property
    def role(self) -> Role:
        return Role[self.token.role]

    @property
    def can_act(self) -> bool:
        return self.role >= Role.operator

    @property
    def actor(self) -> str:
        return f"console:{self.token.name}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signature(key: bytes, sid: str) -> str:
    return _b64(hmac.new(key, b"console-session:" + sid.encode(), hashlib.sha256).digest())


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def cookie_value(key: bytes, sid: str) -> str:
    return f"{sid}.{_signature(key, sid)}"


def verified_sid(key: bytes, cookie: str | None) -> str | None:
    """The session id in a cookie that this daemon signed, else None (no DB read)."""
    if not cookie or len(cookie) > 200:
        return None
    sid, _, sig = cookie.partition(".")
    if not sid or not sig:
        return None
    if not hmac.compare_digest(sig.encode(), _signature(key, sid).encode()):
        return None
    return sid


def sign_in(
    session: Session,
    key: bytes,
    token_text: str,
    uses: TokenUse,
    *,
    ttl_s: int,
    request_id: str = "",
) -> tuple[str, ApiToken]:
    """Check ``token_text`` as the API would and open a session; returns the cookie value.

    Raises :class:`~provisiond.errors.Unauthorized` (with the API's message and hint)
    for an unknown, malformed or expired token."""
    if not token_text.strip():
        raise Unauthorized(
            "no token was entered",
            hint="paste an API token ('provisiond token create' prints one)",
        )
    token = authenticate(session, f"Bearer {token_text.strip()}", uses)
    assert token.id is not None
    now = utcnow()
    # expired sessions of anyone go here: one indexed DELETE per sign-in keeps the table small
    session.execute(delete(ConsoleSession).where(col(ConsoleSession.expires_at) <= now))
    sid = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ttl_s)
    if token.expires_at is not None:
        expires = min(expires, token.expires_at)
    session.add(
        ConsoleSession(
            sid_hash=_sid_hash(sid),
            token_id=token.id,
            csrf=secrets.token_urlsafe(32),
            expires_at=expires,
        )
    )
    audit(
        session,
        "console_sign_in",
        f"console sign-in with token {token.name!r} ({token.role})",
        actor=f"console:{token.name}",
        request_id=request_id,
    )
    return cookie_value(key, sid), token


def current_user(session: Session, key: bytes, cookie: str | None) -> ConsoleUser:
    """The signed-in user for a request's cookie; :class:`SignInRequired` otherwise."""
    sid = verified_sid(key, cookie)
    if sid is None:
        raise SignInRequired("sign in with an API token", hint="")
    row = session.exec(
        select(ConsoleSession, ApiToken)
        .join(ApiToken, col(ApiToken.id) == col(ConsoleSession.token_id))
        .where(ConsoleSession.sid_hash == _sid_hash(sid))
    ).first()
    now = utcnow()
    if row is None:
        raise SignInRequired("the session ended (signed out, or the token was revoked)")
    console, token = row
    if console.expires_at <= now:
        raise SignInRequired("the session expired; sign in again")
    if token.expires_at is not None and token.expires_at <= now:
        raise SignInRequired(f"token {token.name!r} expired; ask an admin for a new one")
    assert console.id is not None
    return ConsoleUser(console.id, token, console.csrf, console.flash, console.flash_kind)


def sign_out(session: Session, user: ConsoleUser, *, request_id: str = "") -> None:
    session.execute(delete(ConsoleSession).where(col(ConsoleSession.id) == user.session_id))
    audit(
        session,
        "console_sign_out",
        f"console sign-out of token {user.token.name!r}",
        actor=user.actor,
        request_id=request_id,
    )


def set_flash(session: Session, user: ConsoleUser, message: str, kind: str = "ok") -> None:
    """One message for the next page this browser loads (an action's result)."""
    session.execute(
        update(ConsoleSession)
        .where(col(ConsoleSession.id) == user.session_id)
        .values(flash=message[:2048], flash_kind=kind[:8])
    )


def take_flash(session: Session, user: ConsoleUser) -> None:
    """Clear the message once shown (only called when there was one)."""
    session.execute(
        update(ConsoleSession)
        .where(col(ConsoleSession.id) == user.session_id)
        .values(flash="", flash_kind="")
    )


def check_origin(headers: Mapping[str, str], allowed: Sequence[str] = ()) -> None:
    """Refuse a form a browser says came from another site.

    ``Sec-Fetch-Site`` (set by the browser itself, so a reverse proxy that rewrites
    ``Host`` does not break it) is trusted when present: only ``same-origin`` and
    ``none`` (typed or bookmarked) pass. Without it, ``Origin`` must name this host
    (the ``Host`` header) or one of ``allowed`` (``console_origins``)."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    origin = headers.get("origin", "")
    if fetch_site:
        if fetch_site in ("same-origin", "none"):
            return
        refused = f"a {fetch_site} page"
    elif not origin or origin == "null":
        return  # an older client that says nothing: the form token decides
    else:
        host = headers.get("host", "").lower()
        origin_host = origin.partition("://")[2].lower()
        if origin_host == host or origin.lower().rstrip("/") in {
            a.lower().rstrip("/") for a in allowed
        }:
            return
        refused = origin[:200]
    raise Forbidden(
        f"the form was sent from {refused}, not from this console",
        hint="use the console's own pages; cross-site forms are refused "
        "(behind a proxy that rewrites Host, list the console's URL in console_origins)",
        code="csrf_refused",
    )


def check_csrf(user: ConsoleUser, sent: str | None, headers: Mapping[str, str],
               allowed: Sequence[str] = ()) -> None:  # fmt: skip
    """Refuse a form that does not carry this session's token, or that a browser says
    came from another site."""
    check_origin(headers, allowed)
    if not sent or not hmac.compare_digest(sent.encode(), user.csrf.encode()):
        raise Forbidden(
            "the form's security token is missing or stale",
            hint="reload the page and try again (a form from another tab or site is refused)",
            code="csrf_refused",
        )


def require_operator(user: ConsoleUser) -> None:
    if not user.can_act:
        raise Forbidden(
            f"token {user.token.name!r} has role {user.token.role}; actions need operator or admin",
            hint="sign in with an operator token to act on machines",
        )


def console_key(mac_key: bytes) -> bytes:
    """The cookie-signing key: derived from the daemon's MAC key, never equal to it."""
    return hmac.new(mac_key, b"provisiond-console-cookie", hashlib.sha256).digest()
