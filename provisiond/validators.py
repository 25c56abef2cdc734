"""Value checks shared by the API schemas, inventory apply and the boot routes."""

from __future__ import annotations

import re

_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff`` or ``aa:bb:..`` -> ``aa:bb:cc:dd:ee:ff``.

    Raises ValueError with what was expected, for pydantic and for inventory problems.
    """
    digits = re.sub(r"[:\-.]", "", value.strip().lower())
    if not _MAC_HEX.match(digits):
        raise ValueError(f"{value!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
