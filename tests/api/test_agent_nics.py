"""The NICs an inspection records, on SQLite and PostgreSQL through the real app: a
machine nobody planned (enrolled by its PXE boot from its second NIC) gets every NIC
its agent reports; a machine planned in the inventory is held to that plan."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import select

from provisiond.container import Services
from provisiond.deploy.agent_reports import issue_agent_token
from provisiond.models import Machine
from tests.api.test_agent_api import events, machine, post, report
from tests.conftest import Api

UNCABLED = "52:54:00:00:0a:01"  # the machine's first NIC: no link, no DHCP
BOOTED = "52:54:00:00:0a:02"  # its second NIC, on the provisioning network
THIRD = "52:54:00:00:0a:03"


def nic(name: str, mac: str, ipv4: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    return {"name": name, "mac": mac, "ipv4": list(ipv4), **kw}


BOTH = [
    nic("eth0", UNCABLED),
    nic("eth1", BOOTED, ("10.0.0.7/24",)),
    nic("docker0", "02:42:ac:11:00:01", virtual=True),  # made up, on many machines
]


def token_for(services: Services, name: str) -> tuple[str, str]:
    with services.db.transaction() as s:
        m = s.exec(select(Machine).where(Machine.name == name)).one()
        return m.uuid, issue_agent_token(s, m)


def nics_of(services: Services, uuid: str) -> dict[str, tuple[str, str, bool]]:
    return {n.mac: (n.name, n.ip_address, n.pxe) for n in machine(services, uuid).nics}


def apply(api: Api, machines: list[dict[str, Any]]) -> None:
    doc = {"version": 1, "machines": machines}
    r = api.admin.post("/api/v1/inventory/apply", json={"yaml": json.dumps(doc)})
    assert r.status_code == 200, r.text


def test_an_unplanned_machine_records_every_nic_it_reports(api: Api, services: Services) -> None:
    # The machine iPXE-booted from its second NIC: the entry script asked for that
    # NIC's script, so the daemon enrolled it under BOOTED (and knows no other MAC).
    r = api.client.get(f"/boot/{BOOTED}.ipxe")
    assert r.status_code == 200, r.text
    name = "pxe-" + BOOTED.replace(":", "")
    uuid, token = token_for(services, name)
    assert nics_of(services, uuid) == {BOOTED: ("", "", True)}

    r = post(api, uuid, "inventory", token, json=report(nics=BOTH))
    assert r.status_code == 200, r.text
    assert nics_of(services, uuid) == {
        BOOTED: ("eth1", "10.0.0.7", True),
        UNCABLED: ("eth0", "", False),  # recorded, not a mismatch; not the PXE NIC
    }
    assert events(services, "mac_mismatch") == []
    (learnt,) = events(services, "nics_recorded")
    assert learnt.kind == "inventory" and learnt.actor == "agent"
    assert learnt.details["added"] == [{"mac": UNCABLED, "name": "eth0", "ip_address": ""}]
    assert events(services, "inventory_reported")[0].details["mac_mismatch"] is False

    # Learnt NICs are no plan: a card added later is recorded by the next inspection,
    # and a NIC gone from the report stays (the agent may just not have seen it).
    again = [nic("eth1", BOOTED, ("10.0.0.8/24",)), nic("eth2", THIRD)]
    assert post(api, uuid, "inventory", token, json=report(nics=again)).status_code == 200
    assert nics_of(services, uuid) == {
        BOOTED: ("eth1", "10.0.0.8", True),
        UNCABLED: ("eth0", "", False),
        THIRD: ("eth2", "", False),
    }
    assert events(services, "mac_mismatch") == []
    assert len(events(services, "nics_recorded")) == 2


def test_an_unplanned_machine_does_not_take_another_machines_mac(
    api: Api, services: Services
) -> None:
    apply(api, [{"name": "other", "nics": [{"mac": THIRD, "name": "eth0", "pxe": True}]}])
    assert api.client.get(f"/boot/{BOOTED}.ipxe").status_code == 200
    uuid, token = token_for(services, "pxe-" + BOOTED.replace(":", ""))
    nics = [*BOTH, nic("eth2", THIRD)]
    assert post(api, uuid, "inventory", token, json=report(nics=nics)).status_code == 200
    (mismatch,) = events(services, "mac_mismatch")
    assert mismatch.details["planned"] is False
    assert mismatch.details["unknown"] == [THIRD] and mismatch.details["missing_pxe"] == []
    assert mismatch.details["owned_by_other_machines"] == {THIRD: "other"}
    # The rest is still recorded; THIRD stays with the machine that holds it.
    assert set(nics_of(services, uuid)) == {BOOTED, UNCABLED}
    with services.db.read_session() as s:
        other = s.exec(select(Machine).where(Machine.name == "other")).one()
        assert [n.mac for n in other.nics] == [THIRD]


def test_a_machine_without_nics_records_what_it_reports(api: Api, services: Services) -> None:
    # Enrolled by an operator (or a discovery sweep) with only its BMC known.
    assert api.admin.post("/api/v1/machines", json={"name": "bare"}).status_code in (200, 201)
    uuid, token = token_for(services, "bare")
    assert post(api, uuid, "inventory", token, json=report(nics=BOTH)).status_code == 200
    assert nics_of(services, uuid) == {
        UNCABLED: ("eth0", "", False),
        BOOTED: ("eth1", "10.0.0.7", False),
    }
    assert events(services, "mac_mismatch") == []


def test_a_planned_machine_is_checked_against_its_plan(api: Api, services: Services) -> None:
    # Ops planned the NIC on the provisioning network, not the uncabled one.
    apply(api, [{"name": "n1", "nics": [{"mac": BOOTED, "name": "prov", "pxe": True}]}])
    uuid, token = token_for(services, "n1")
    assert post(api, uuid, "inventory", token, json=report(nics=BOTH)).status_code == 200
    (mismatch,) = events(services, "mac_mismatch")
    assert mismatch.details["planned"] is True
    assert mismatch.details["unknown"] == [UNCABLED] and mismatch.details["missing_pxe"] == []
    assert mismatch.details["owned_by_other_machines"] == {}
    assert "NICs left unchanged" in mismatch.message
    assert nics_of(services, uuid) == {BOOTED: ("prov", "", True)}
    assert events(services, "nics_recorded") == []

    # Once the plan names both NICs, the report agrees and is taken.
    both = [{"mac": UNCABLED, "name": "eth0"}, {"mac": BOOTED, "name": "prov", "pxe": True}]
    apply(api, [{"name": "n1", "nics": both}])
    assert post(api, uuid, "inventory", token, json=report(nics=BOTH)).status_code == 200
    assert len(events(services, "mac_mismatch")) == 1
    assert nics_of(services, uuid) == {
        UNCABLED: ("eth0", "", False),
        BOOTED: ("eth1", "10.0.0.7", True),
    }


@pytest.mark.parametrize("how", ["api", "inventory"])
def test_an_operator_who_sets_the_nics_of_a_pxe_machine_plans_them(
    api: Api, services: Services, how: str
) -> None:
    assert api.client.get(f"/boot/{BOOTED}.ipxe").status_code == 200
    name = "pxe-" + BOOTED.replace(":", "")
    uuid, token = token_for(services, name)
    planned = [{"mac": BOOTED, "name": "prov", "pxe": True}]
    if how == "api":
        r = api.admin.patch(f"/api/v1/machines/{name}", json={"nics": planned})
        assert r.status_code == 200, r.text
    else:
        apply(api, [{"name": name, "nics": planned}])
    assert post(api, uuid, "inventory", token, json=report(nics=BOTH)).status_code == 200
    (mismatch,) = events(services, "mac_mismatch")
    assert mismatch.details["planned"] is True and mismatch.details["unknown"] == [UNCABLED]
    assert nics_of(services, uuid) == {BOOTED: ("prov", "", True)}
