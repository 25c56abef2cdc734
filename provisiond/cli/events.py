"""`provisiond events`."""

from __future__ import annotations


def events() -> None:
    """List events."""
