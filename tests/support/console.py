"""Signing a TestClient (or httpx client) into the console, and reading its pages."""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(client: Any, token: str, next_path: str = "/ui/") -> Any:
    """POST the sign-in form; the client keeps the session cookie. Returns the response
    (a 303 to ``next_path`` on success)."""
    return client.post(
        "/ui/signin",
        data={"token": token, "next": next_path},
        follow_redirects=False,
    )


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no form token on the page"
    return found.group(1)


def svgs(html: str) -> list[ElementTree.Element]:
    """Every inline <svg> on a page, parsed (they must be well-formed XML)."""
    out = []
    for chunk in re.findall(r"<svg\b.*?</svg>", html, flags=re.S):
        out.append(ElementTree.fromstring(chunk))  # noqa: S314  (our own pages)
    return out
