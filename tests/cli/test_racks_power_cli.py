"""`provisiond racks list|power` and `machines power ... --force` end to end: the real CLI
against a real daemon whose own power sync job reads a simulated BMC farm (UDP)."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisiond.rack import BmcFarm
from provisiond.rack.ipmi_machine import PowerMeter
from tests.support.daemon import Daemon, cli

pytestmark = pytest.mark.slow  # a daemon and a few CLI processes

_addresses = itertools.count(random.randrange(0, 40_000))


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    n = next(_addresses)
    with BmcFarm(2, address=f"127.{150 + n // 62_500 % 20}.{n // 250 % 250}.{n % 250 + 2}") as f:
        f.set_meter(None, PowerMeter(idle_watts=250, load_watts=500))
        yield f


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path / "data",
        extra_env={"COLUMNS": "200", "PROVISIOND_POWER_SYNC_INTERVAL_S": "0.5"},
    )
    d.prepare()
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _inventory(daemon: Daemon, farm: BmcFarm, tmp_path: Path) -> None:
    machines = []
    for index in range(2):
        address, port = farm.endpoint(index)
        bmc = {"address": address, "port": port, "username": "admin", "password": "password"}
        machines.append({"name": f"m{index}", "rack": "r1", "power_watts": 400, "bmc": bmc})
    spec = {"racks": [{"name": "r1", "power_budget_watts": 500}], "machines": machines}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(spec))
    applied = cli("inventory", "apply", str(path), env=daemon.env)
    assert applied.returncode == 0, applied.stderr + applied.stdout


def test_racks_power_and_forced_power_on(daemon: Daemon, farm: BmcFarm, tmp_path: Path) -> None:
    _inventory(daemon, farm, tmp_path)
    farm.set_power(0, True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the daemon's own power sync job reads the farm
        view = json.loads(cli("racks", "power", "r1", "--json", env=daemon.env).stdout)
        if view["counted"] == {"bmc": 1, "off": 1}:  # m1 is off: 0 W, whatever it reads
            break
        time.sleep(0.3)
    assert view["measured_watts"] == 250 and view["budget_status"] == "ok", view

    table = cli("racks", "power", env=daemon.env)
    assert table.returncode == 0, table.stderr
    summary = "rack r1: 250 W of 500 W budget, ok; nameplate 800 W; counted: 1 bmc, 1 off"
    assert summary in table.stdout
    assert "m0" in table.stdout and "250 W" in table.stdout
    listing = cli("racks", "list", env=daemon.env)
    assert "r1" in listing.stdout and "800 W" in listing.stdout

    refused = cli("machines", "power", "m1", "on", env=daemon.env)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "rack r1 would draw 650 W of its 500 W budget" in said, said
    assert "--force" in said
    assert farm.state(1).power == "off"

    forced = cli("machines", "power", "m1", "on", "--force", env=daemon.env)  # an admin token
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "forced over the rack budget" in forced.stdout
    assert farm.state(1).power == "on"
