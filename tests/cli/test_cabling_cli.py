"""`provisiond cabling check|export|import` as real processes against a real daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisiond.db import Database
from provisiond.models import Machine, Nic, Rack, Switch, SwitchPort
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow  # a daemon and a few CLI processes

ESC = "\x1b"
HOSTILE = f"[bold]sw[/x] :ab: {ESC}[31m"


def _seen(port: str, system: str = "lab1-sw1") -> dict[str, str]:
    return {"system_name": system, "port_id": port, "port_id_subtype": "interface_name"}


def _store(db: Database) -> None:
    """vm1 and vm2 swapped on lab1-sw1; vm3 on a switch with a hostile name."""
    with db.transaction() as s:
        rack = Rack(name="lab1")
        s.add(rack)
        s.flush()
        switch = Switch(name="lab1-sw1", rack_id=rack.id)
        s.add(switch)
        s.flush()
        assert switch.id is not None
        ports = [SwitchPort(name=f"swp{i}", switch_id=switch.id) for i in (1, 2, 3)]
        s.add_all(ports)
        s.flush()
        port = {p.name: p.id for p in ports}
        seen = {"vm1": _seen("swp2"), "vm2": _seen("swp1"), "vm3": _seen("e1", HOSTILE)}
        for i, name in enumerate(("vm1", "vm2", "vm3"), 1):
            m = Machine(name=name, rack_id=rack.id, state="available")
            s.add(m)
            s.flush()
            assert m.id is not None
            s.add(Nic(machine_id=m.id, mac=f"52:54:00:00:00:0{i}", name="eth0", pxe=True,
                      switch_port_id=port[f"swp{i}"], lldp=seen[name]))  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "data", extra_env={"COLUMNS": "250"})
    d.prepare()
    db = Database(f"sqlite:///{tmp_path / 'data' / 'provisiond.db'}")
    try:
        _store(db)
    finally:
        db.dispose()
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_check_export_import(daemon: Daemon, tmp_path: Path) -> None:
    env = daemon.env
    r = cli("cabling", "check", env=env)
    assert r.returncode == 1, r.stderr  # ports fail: a script can gate on it
    out = r.stdout
    assert "swapped with vm2 eth0" in out and "swapped with vm1 eth0" in out
    assert "swap: vm1 eth0 and vm2 eth0 are swapped" in out
    assert "lab1-sw1/swp1" in out and "0 pass, 3 fail, 0 n/a" in out
    # Data prints as written: no markup, no emoji, the escape shown escaped.
    assert "[bold]sw[/x] :ab: \\x1b[31m/e1" in out and ESC not in out

    r = cli("cabling", "check", "--rack", "lab1", "--json", env=env)
    assert r.returncode == 1
    body = json.loads(r.stdout)
    assert body["counts"]["fail"] == 3 and body["findings"][0]["kind"] == "swap"
    r = cli("cabling", "check", "--rack", "nope", env=env)
    assert r.returncode != 0 and "no rack named 'nope'" in r.stderr

    r = cli("cabling", "export", env=env)
    assert r.returncode == 0, r.stderr
    assert '"lab1-sw1":"swp1" -- "vm1":"eth0";' in r.stdout
    # The plan follows the cables: swap vm1 and vm2 in the file and import it.
    fixed = (
        r.stdout.replace('"vm1":"eth0"', '"vmX":"eth0"')
        .replace('"vm2":"eth0"', '"vm1":"eth0"')
        .replace('"vmX":"eth0"', '"vm2":"eth0"')
    )
    dot = tmp_path / "topology.dot"
    dot.write_text(fixed)
    r = cli("cabling", "import", str(dot), env=env)
    assert r.returncode == 0, r.stderr
    assert "2 rewired, 0 unwired, 1 unchanged, 0 skipped" in r.stdout
    r = cli("cabling", "check", "--json", env=env)
    assert json.loads(r.stdout)["counts"] == {"pass": 2, "fail": 1, "n/a": 0}

    dot.write_text('graph G {\n  "lab1-sw1":"swp7" -- "vm1":"eth0";\n}\n')
    r = cli("cabling", "import", str(dot), env=env)
    assert r.returncode != 0
    assert "line 2" in r.stderr and "no port 'swp7'" in r.stderr and "hint:" in r.stderr
    r = cli("cabling", "import", str(tmp_path / "missing.dot"), env=env)
    assert r.returncode != 0 and "cannot read" in r.stderr
