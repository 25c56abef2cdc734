"""`make demo`'s script, one-shot, as a new user runs it: three machines to instance-ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisiond.rack.scenario import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the virtual rack needs root"),
]


@pytest.mark.timeout(900)
def test_demo_oneshot_brings_three_machines_to_instance_ready(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
    env.update(
        DEMO_ONESHOT="1",
        DEMO_PORT=str(free_port()),
        DEMO_DATA_DIR=str(tmp_path / "demo"),
        DEMO_RACK=f"demo{os.getpid() % 10000}",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "3 answered, 3 matched the inventory, 0 failed" in out
    assert "inspected: vm1 (1 CPU" in out
    rows = [line for line in out.splitlines() if line.startswith("│ vm")]
    ready = [row for row in rows if "SHA256:" in row]
    assert len(ready) == 3, out
    for row in ready:
        assert "│ active " in row, row
    # The physical truth table: each machine cabled as planned (LLDP of the rack's
    # switch), its draw read from its PDU outlet, the rack within its budget.
    cabled = [row for row in rows if "│ pass " in row]
    assert len(cabled) == 3 and all("│ pdu " in row for row in cabled), out
    assert "W measured of a 2000 W budget (ok)" in out, out
    assert f"console:  http://127.0.0.1:{env['DEMO_PORT']}/ui/" in out, out
    assert "demo: stopped provisiond and removed the virtual rack" in out
    assert not Path(f"/run/netns/pvd-demo{os.getpid() % 10000}").exists()
    key = tmp_path / "demo" / "demo_ed25519"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
