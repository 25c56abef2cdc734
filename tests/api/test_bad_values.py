"""Values that would corrupt scheduling are refused at the API edge: 422, the path, a hint.

The same values are refused by the database's CHECK constraints too
(tests/db/test_check_constraints.py); these tests show that a client never gets that
far, so it sees which field is wrong instead of a 409 or a 500.
"""

from __future__ import annotations

from typing import Any

import pytest

from provisiond.container import Services
from tests.conftest import Api
from tests.support.allocations import KEY, add_image

YAML = {"Content-Type": "application/yaml"}


def _allocation(**extra: Any) -> dict[str, Any]:
    return {"image": "debian-12", "ssh_keys": [KEY], **extra}


@pytest.mark.parametrize(
    ("path", "payload", "where"),
    [
        ("/api/v1/allocations", _allocation(lease=0), "lease"),
        ("/api/v1/allocations", _allocation(lease="0s"), "lease"),
        ("/api/v1/allocations", _allocation(lease=-60), "lease"),
        ("/api/v1/allocations", _allocation(lease=2**31), "lease"),
        ("/api/v1/racks", {"name": "r1", "u_height": 0}, "u_height"),
        ("/api/v1/racks", {"name": "r1", "power_budget_watts": -1}, "power_budget_watts"),
        ("/api/v1/machines", {"name": "m1", "cpus": -1}, "cpus"),
        ("/api/v1/machines", {"name": "m1", "ram_mib": -1}, "ram_mib"),
        ("/api/v1/machines", {"name": "m1", "u_position": 0}, "u_position"),
        ("/api/v1/machines", {"name": "m1", "u_height": 0}, "u_height"),
        ("/api/v1/machines", {"name": "m1", "power_watts": -5}, "power_watts"),
        ("/api/v1/machines", {"name": "m1", "disks": [{"size_gb": -100}]}, "disks.0"),
        ("/api/v1/machines", {"name": "m1", "disks": [{"size_bytes": -1}]}, "disks.0"),
        ("/api/v1/machines", {"name": "m1", "disks": [{"size_gb": "500"}]}, "disks.0"),
        ("/api/v1/switches", {"name": "s1", "u_position": 0}, "u_position"),
        ("/api/v1/switches", {"name": "s1", "u_height": 0}, "u_height"),
        ("/api/v1/pdus", {"name": "p1", "u_height": -1}, "u_height"),
        ("/api/v1/pdus", {"name": "p1", "capacity_watts": -1}, "capacity_watts"),
        ("/api/v1/tokens", {"name": "t1", "quota_machines": -1}, "quota_machines"),
    ],
)
def test_a_bad_value_is_422_naming_the_field(
    api: Api, services: Services, path: str, payload: dict[str, Any], where: str
) -> None:
    add_image(services.db)
    response = api.admin.post(path, json=payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["problems"][0]["path"].startswith(where), error
    assert error["hint"]


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"cpus": -1}, "cpus"),
        ({"ram_mib": -1}, "ram_mib"),
        ({"u_height": 0}, "u_height"),
        ({"u_position": 0}, "u_position"),
        ({"disks": [{"size_gb": -1}]}, "disks.0"),
    ],
)
def test_a_bad_value_in_a_patch_is_422(api: Api, payload: dict[str, Any], where: str) -> None:
    assert api.admin.post("/api/v1/machines", json={"name": "m1"}).status_code == 201
    response = api.admin.patch("/api/v1/machines/m1", json=payload)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["problems"][0]["path"].startswith(where)


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ("racks: [{name: r1, u_height: 0}]", "racks[0].u_height", "greater than or equal to 1"),
        ("machines: [{name: m1, cpus: -1}]", "machines[0].cpus", "greater than or equal to 0"),
        ("machines: [{name: m1, ram_mib: -1}]", "machines[0].ram_mib", "greater than or equal"),
        ("machines: [{name: m1, u_height: 0}]", "machines[0].u_height", "greater than or equal"),
        ("machines: [{name: m1, disks: [{size_gb: -1}]}]", "machines[0].disks[0]", "size_gb"),
        ("pdus: [{name: p1, capacity_watts: -1}]", "pdus[0].capacity_watts", "greater than"),
    ],
)
def test_a_bad_value_in_the_inventory_file_names_its_line(
    api: Api, entry: str, where: str, words: str
) -> None:
    response = api.operator.post("/api/v1/inventory/plan", content=entry + "\n", headers=YAML)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    [problem] = [p for p in error["problems"] if p["path"] == where]
    assert words in problem["message"] and problem["line"] == 1


@pytest.mark.parametrize(
    ("lease", "words"),
    [(0, "at least 1 second"), ("0s", "at least 1 second"), (2**31, "at most 2147483647")],
)
def test_a_lease_out_of_range_says_which_end(
    api: Api, services: Services, lease: Any, words: str
) -> None:
    add_image(services.db)
    response = api.ci.post("/api/v1/allocations", json=_allocation(lease=lease))
    assert response.status_code == 422
    assert words in response.json()["error"]["message"]
