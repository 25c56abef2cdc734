"""The BMC commands as an operator types them: credentials, discover, machines power."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, cli
from tests.support.ipmisim import IpmiSim, free_udp_port, require_tools


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Daemon, IpmiSim]]:
    require_tools()
    sim = IpmiSim(tmp_path / "sim", free_udp_port())
    daemon = Daemon(tmp_path / "data", extra_env={"PROVISIOND_DISCOVERY_PROBE_TIMEOUT_S": "0.3"})
    try:
        sim.start()
        daemon.prepare()
        daemon.start()
        yield daemon, sim
    finally:
        daemon.stop(signal.SIGTERM)
        sim.stop()


def test_operator_flow(setup: tuple[Daemon, IpmiSim]) -> None:
    daemon, sim = setup
    env = daemon.env
    refused = cli("credentials", "add", "dc1", "-u", "admin", env=env)
    assert refused.returncode == 1 and "--password-stdin" in refused.stderr

    added = cli(
        "credentials", "add", "dc1", "-u", "admin", "--password-stdin", env=env, stdin="password\n"
    )
    assert added.returncode == 0, added.stderr
    assert "password" not in added.stdout.replace("credential set", "")
    listed = json.loads(cli("credentials", "list", "--json", env=env).stdout)
    assert listed[0]["name"] == "dc1" and listed[0]["password_set"] is True
    assert "password" not in json.dumps(listed).replace("password_set", "")

    empty = free_udp_port()
    found = cli("discover", "127.0.0.1/32", "--ports", f"{sim.port},{empty}", "--json", env=env)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    name = f"bmc-127-0-0-1-{sim.port}"
    assert result["enrolled"] == [name] and result["responders"] == 1

    human = cli("discover", "127.0.0.1/32", "--ports", str(sim.port), env=env)
    assert "1 answered" in human.stdout and "1 unchanged" in human.stdout

    on = cli("machines", "power", name, "on", env=env)
    assert on.returncode == 0, on.stderr
    assert f"{name}: power on" in on.stdout and sim.power() == "on"
    status = json.loads(cli("machines", "power", name, "status", "--json", env=env).stdout)
    assert status["state"] == "on"
    bad = cli("machines", "power", name, "explode", env=env)
    assert bad.returncode == 1 and "status, on, off" in bad.stderr

    events = json.loads(cli("events", "--machine", name, "--json", env=env).stdout)
    assert {"enroll", "power_on"} <= {e["event"] for e in events}

    bad_net = cli("discover", "not-a-net", env=env)
    assert bad_net.returncode == 1 and "bad network" in bad_net.stderr
    assert "Traceback" not in bad_net.stderr
