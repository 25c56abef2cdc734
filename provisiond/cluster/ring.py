"""Rendezvous (highest random weight) hashing: which live daemon owns a key.

Every daemon computes the same owner from the same member list, with no table of
assignments. When a member leaves, only its keys move (each to the member that
scores next highest for it); when one joins, it takes about 1/n of the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def _score(member: str, key: str) -> bytes:
    return hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()


def owner(key: str, members: Sequence[str]) -> str | None:
    """The member that owns ``key``; None when there are no members."""
    if not members:
        return None
    return max(members, key=lambda m: _score(m, key))


def share(keys: Iterable[str], members: Sequence[str], me: str) -> list[str]:
    """The keys ``me`` owns among ``members``."""
    return [k for k in keys if owner(k, members) == me]
