"""Who may make BMC traffic: a ``ci`` token reads the cached power state, operators the BMC.

Run through the real app with real tokens of both roles and a real ipmi_sim BMC.
The power is changed behind the daemon's back, so a read that reached the BMC and
one that did not give different answers.
"""

from __future__ import annotations

import time

from tests.conftest import Api
from tests.support.ipmisim import IpmiSim, free_udp_port


def _machine(api: Api, name: str, port: int) -> None:
    bmc = {"address": "127.0.0.1", "port": port, "username": "admin", "password": "password"}
    r = api.operator.post("/api/v1/machines", json={"name": name, "bmc": bmc})
    assert r.status_code == 201, r.text


def test_ci_reads_the_cached_state_and_operators_the_bmc(api: Api, ipmi_sim: IpmiSim) -> None:
    _machine(api, "n1", ipmi_sim.port)
    cached = api.ci.get("/api/v1/machines/n1/power")
    assert cached.status_code == 200, cached.text
    assert cached.json()["state"] == "unknown" and cached.json()["source"] == "cached"

    assert api.operator.post("/api/v1/machines/n1/power", json={"action": "on"}).status_code == 200
    assert api.ci.get("/api/v1/machines/n1/power").json()["state"] == "on"

    ipmi_sim.set_power(False)  # behind the daemon's back: only a BMC read can see it
    stale = api.ci.get("/api/v1/machines/n1/power").json()
    assert stale["state"] == "on" and stale["source"] == "cached", stale
    live = api.operator.get("/api/v1/machines/n1/power").json()
    assert live["state"] == "off" and live["source"] == "bmc", live
    # The operator's read refreshed the cache that ci sees.
    assert api.ci.get("/api/v1/machines/n1/power").json()["state"] == "off"
    assert api.admin.get("/api/v1/machines/n1/power").json()["source"] == "bmc"


def test_ci_read_never_waits_for_a_dead_bmc(api: Api) -> None:
    _machine(api, "gone", free_udp_port())  # nothing answers there
    started = time.monotonic()
    r = api.ci.get("/api/v1/machines/gone/power")
    assert r.status_code == 200 and r.json()["state"] == "unknown", r.text
    assert time.monotonic() - started < 1.0
    assert api.ci.post("/api/v1/machines/gone/power", json={"action": "on"}).status_code == 403
    assert api.anonymous.get("/api/v1/machines/gone/power").status_code == 401
    assert api.ci.get("/api/v1/machines/nope/power").status_code == 404
