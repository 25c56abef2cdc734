"""Discovery over a loopback port range with real ipmi_sim BMCs and empty ports."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from provisiond.container import Services
from provisiond.models import Bmc, CredentialSet, Event, Machine
from tests.conftest import Api
from tests.support.ipmisim import IpmiSim, free_udp_port


@pytest.fixture(autouse=True)
def _quick_probe(services: Services) -> None:
    services.settings.discovery_probe_timeout_s = 0.3  # empty ports never answer


def _credential(services: Services, name: str, password: str) -> None:
    with services.db.transaction() as session:
        session.add(
            CredentialSet(
                name=name, username="admin", secret_encrypted=services.secrets.encrypt(password)
            )
        )


def test_sweep_enrolls_live_bmcs_once(
    api: Api, services: Services, ipmi_sims: list[IpmiSim]
) -> None:
    _credential(services, "wrong", "not-it")
    _credential(services, "default", "password")
    live = sorted(s.port for s in ipmi_sims)
    empty = [free_udp_port() for _ in range(3)]
    ports = ",".join(str(p) for p in [*live, *empty])
    body = {"networks": ["127.0.0.1/32"], "ports": ports, "credentials": ["wrong", "default"]}

    first = api.operator.post("/api/v1/discovery", json=body)
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["targets"] == 5 and result["responders"] == 2
    names = [f"bmc-127-0-0-1-{p}" for p in live]
    assert sorted(result["enrolled"]) == names, result["failed"]
    assert result["failed"] == [] and result["updated"] == []

    with services.db.read_session() as session:
        machines = session.exec(select(Machine).order_by(Machine.name)).all()
        assert [m.name for m in machines] == names
        assert all(m.state == "enrolled" and m.vendor == "OpenIPMI" for m in machines)
        bmcs = session.exec(select(Bmc)).all()
        default = session.exec(select(CredentialSet).where(CredentialSet.name == "default")).one()
        assert {b.port for b in bmcs} == set(live)
        assert all(b.credential_set_id == default.id and not b.secret_encrypted for b in bmcs)
        enrolled = session.exec(select(Event).where(Event.event == "enroll")).all()
        assert all(e.message.startswith("discovered via IPMI at 127.0.0.1:") for e in enrolled)
        sweep = session.exec(select(Event).where(Event.event == "sweep")).one()
        assert (
            sweep.message
            == "swept 5 targets: 2 answered, 2 enrolled, 0 updated, 0 unchanged, 0 failed"
        )

    # A second sweep changes nothing and creates no duplicates; progress streams as NDJSON.
    second = api.operator.post("/api/v1/discovery?stream=true", json=body)
    assert second.status_code == 200
    lines = [json.loads(line) for line in second.text.splitlines()]
    phases = [line["progress"]["phase"] for line in lines if "progress" in line]
    assert phases[0] == "probe" and phases[-1] == "done" and "probed" in phases
    final = lines[-1]["result"]
    assert final["enrolled"] == [] and sorted(final["unchanged"]) == names, final
    with services.db.read_session() as session:
        assert len(session.exec(select(Machine)).all()) == 2


def test_sweep_reports_bmcs_no_credential_opens(
    api: Api, services: Services, ipmi_sims: list[IpmiSim]
) -> None:
    _credential(services, "wrong", "not-it")
    body = {"networks": ["127.0.0.1/32"], "ports": str(ipmi_sims[0].port)}
    result = api.operator.post("/api/v1/discovery", json=body).json()
    assert result["enrolled"] == []
    [failed] = result["failed"]
    attempts = failed.pop("attempts")
    assert failed == {
        "bmc": f"127.0.0.1:{ipmi_sims[0].port}",
        "code": "bmc_auth_failed",
        "reason": "no credential set logged in (tried wrong)",
        "hint": "add the BMC's credentials as a credential set and sweep again",
    }
    assert [(a["credential_set"], a["code"]) for a in attempts] == [("wrong", "bmc_auth_failed")]
    assert "password" in attempts[0]["hint"]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"networks": ["10.0.0.0/8"], "ports": "623"}, 400, "more than"),
        ({"networks": ["nonsense"]}, 400, "bad network"),
        ({"networks": ["127.0.0.1/32"], "ports": "99999"}, 400, "bad port list"),
        ({"networks": ["127.0.0.1/32"], "credentials": ["nope"]}, 404, "no credential set"),
        ({"networks": []}, 422, "networks"),
    ],
)
def test_bad_sweeps_are_refused_before_any_packet(
    api: Api, services: Services, body: dict[str, object], status: int, text: str
) -> None:
    services.settings.discovery_max_targets = 4096
    _credential(services, "default", "password")
    response = api.operator.post("/api/v1/discovery", json=body)
    assert response.status_code == status, response.text
    assert text in response.json()["error"]["message"]
    assert response.json()["error"]["hint"] or status == 422


def test_discovery_needs_operator(api: Api) -> None:
    body = {"networks": ["127.0.0.1/32"]}
    assert api.ci.post("/api/v1/discovery", json=body).status_code == 403
    assert api.anonymous.post("/api/v1/discovery", json=body).status_code == 401


def test_sweep_of_simulated_bmcs_reads_identity(api: Api, services: Services) -> None:
    """20 simulated BMCs among 40 ports: exactly the live ones, with serial and BMC MAC."""
    from provisiond.rack import BmcFarm, BmcIdentity

    _credential(services, "sim", "password")
    with BmcFarm(count=20) as farm:
        first = farm.base_port
        body = {"networks": ["127.0.0.1/32"], "ports": f"{first}-{first + 39}"}
        result = api.operator.post("/api/v1/discovery", json=body).json()
        assert result["responders"] == 20 and len(result["enrolled"]) == 20
        again = api.operator.post("/api/v1/discovery", json=body).json()
        assert again["enrolled"] == [] and len(again["unchanged"]) == 20
        with services.db.read_session() as session:
            machine = session.exec(
                select(Machine).where(Machine.name == f"bmc-127-0-0-1-{first + 7}")
            ).one()
            bmc = session.exec(select(Bmc).where(Bmc.machine_id == machine.id)).one()
        expected = BmcIdentity.default("127.0.0.1", first + 7)
        assert machine.serial == expected.serial and machine.vendor == expected.manufacturer
        assert bmc.mac == expected.bmc_mac
