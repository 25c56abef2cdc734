"""The schema revisions this code knows, read from its migration files without alembic.

A daemon refuses a database at a revision it does not know: a newer daemon migrated
it (a rolling upgrade under way), and old code must not run on a newer schema.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this code has a migration for (read from the files, without alembic)."""
    found = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        match = _REVISION.search(path.read_text())
        if match:
            found.add(match.group(1))
    return frozenset(found)


_REVISION = re.compile(r'^revision: str = "([^"]+)"', re.MULTILINE)
