"""`make demo`'s script, one-shot, as a new user runs it: it must exit 0 and show the rack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import free_port


def free_udp_range(count: int) -> int:
    """A first port with ``count`` free UDP ports after it, below the ephemeral range."""
    import random
    import socket

    for _ in range(50):
        first = random.randrange(20000, 30000)
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free UDP port range")


ROOT = Path(__file__).resolve().parents[2]


def test_demo_oneshot_serves_the_example_inventory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
    env.update(
        DEMO_ONESHOT="1",
        DEMO_PORT=str(free_port()),
        DEMO_BMC_PORT=str(free_udp_range(3)),
        DEMO_DATA_DIR=str(tmp_path / "demo"),
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "6 to create" in out and "(applied)" in out
    for name in ("vm1", "vm2", "vm3"):
        assert name in out
    assert "provisiond is serving the example inventory" in out
    assert "3 answered" in out and "3 updated" in out  # the BMCs matched the inventory
    assert "vm1: power on" in out
    assert "demo: stopped provisiond and the simulated BMCs" in out
    token = (tmp_path / "demo" / "admin.token").read_text().strip()
    assert token.startswith("pvd_")
    assert oct((tmp_path / "demo" / "admin.token").stat().st_mode & 0o777) == "0o600"
