"""A BMC that refuses the privilege provisiond needs: the driver's error and hint survive.

The simulator's ``privilege=LEVEL`` fault caps what its user may hold, as a real BMC
does for a user- or operator-level account: the login works, and raising the
session's privilege is refused. ipmitool (an outside peer) checks the fault
itself; the IPMI driver and a discovery sweep through the API show what an
operator then reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from provisiond.container import Services
from provisiond.drivers.power.base import BmcAuthError, BmcTarget, PowerAction
from provisiond.drivers.power.ipmi import IpmiPower
from provisiond.machines.discovery import machine_name
from provisiond.models import CredentialSet
from provisiond.rack import BmcFarm
from provisiond.rack.ipmi_faults import FaultSpecError, parse_fault
from tests.conftest import Api


@pytest.fixture(autouse=True)
def _quick_probe(services: Services) -> None:
    services.settings.discovery_probe_timeout_s = 0.3


def _credential(services: Services, name: str, password: str) -> None:
    with services.db.transaction() as session:
        session.add(
            CredentialSet(
                name=name, username="admin", secret_encrypted=services.secrets.encrypt(password)
            )
        )


def _ipmitool(port: int, level: str, *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("ipmitool") or "/usr/bin/ipmitool"
    if not os.path.exists(tool):
        pytest.skip("ipmitool is not installed (apt-get install ipmitool)")
    login = ["-U", "admin", "-P", "password", "-L", level, "-N", "1", "-R", "1"]
    return subprocess.run(
        [tool, "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port), *login, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_privilege_fault_caps_the_session_for_ipmitool() -> None:
    assert parse_fault("privilege=user@2").changes == {"privilege": 2}
    with pytest.raises(FaultSpecError, match="privilege needs a level"):
        parse_fault("privilege=root")
    with BmcFarm(1, faults=[parse_fault("privilege=user")]) as farm:
        port = farm.endpoint(0)[1]
        refused = _ipmitool(port, "ADMINISTRATOR", "chassis", "power", "status")
        assert refused.returncode != 0
        reading = _ipmitool(port, "USER", "chassis", "power", "status")
        assert reading.returncode == 0 and "Chassis Power is off" in reading.stdout
        changing = _ipmitool(port, "USER", "chassis", "power", "on")
        assert changing.returncode != 0 and "privilege" in changing.stderr.lower()
        assert farm.state(0).power == "off"


def test_the_driver_names_a_privilege_refusal() -> None:
    with BmcFarm(1, faults=[parse_fault("privilege=user")]) as farm:
        host, port = farm.endpoint(0)
        driver = IpmiPower(
            BmcTarget(host, port, "admin", "password", credential_source="credential set 'lab'")
        )
        try:
            with pytest.raises(BmcAuthError) as exc:
                driver.set_power(PowerAction.ON)
        finally:
            driver.close()
    assert exc.value.code == "bmc_privilege_insufficient"
    assert "'admin'" in exc.value.message and "privilege" in exc.value.message
    assert "credential set 'lab'" in exc.value.hint and "administrator" in exc.value.hint


def test_discovery_keeps_the_privilege_hint(api: Api, services: Services) -> None:
    _credential(services, "wrong", "not-it")
    _credential(services, "lab", "password")
    with BmcFarm(2, faults=[parse_fault("privilege=user@1")]) as farm:
        ports = [farm.endpoint(0)[1], farm.endpoint(1)[1]]
        body = {
            "networks": ["127.0.0.1/32"],
            "ports": f"{ports[0]},{ports[1]}",
            "credentials": ["wrong", "lab"],
        }
        r = api.operator.post("/api/v1/discovery", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["responders"] == 2
    assert result["enrolled"] == [machine_name("127.0.0.1", ports[0])]
    [failed] = result["failed"]
    assert failed["bmc"] == f"127.0.0.1:{ports[1]}"
    assert failed["code"] == "bmc_privilege_insufficient", failed
    assert "no credential set logged in" not in failed["reason"]
    assert "credential set 'lab'" in failed["reason"] and "privilege" in failed["reason"]
    assert "administrator" in failed["hint"]
    attempts = {a["credential_set"]: a for a in failed["attempts"]}
    assert attempts["wrong"]["code"] == "bmc_auth_failed"
    assert attempts["lab"]["code"] == "bmc_privilege_insufficient"
    assert "not-it" not in r.text

    # The sweep's event keeps the same failure for the event log.
    events = api.ci.get("/api/v1/events", params={"kind": "discovery"}).json()
    sweep = next(e for e in events if e["event"] == "sweep")
    assert sweep["details"]["failed"][0]["code"] == "bmc_privilege_insufficient"
