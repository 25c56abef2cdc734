"""Fixtures shared by the integration modules that run dnsmasq in a namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Lab, require


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A namespace with a bridge (tests/support/netns.Lab), torn down after the test."""
    require("ip", "dnsmasq", "busybox", "timeout")
    if not Path("/usr/lib/ipxe/undionly.kpxe").is_file():
        require("ipxe-binaries-in-/usr/lib/ipxe")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
