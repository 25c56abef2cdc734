"""The console's allocation and image lists."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from provisiond.container import Services
from provisiond.models import Allocation, Image, Machine
from tests.support.allocations import token_id
from tests.support.statements import counting

Clients = dict[str, TestClient]
HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def rows(html: str, attr: str) -> list[tuple[str, list[str]]]:
    """(attribute value, cells as text) of each ``<tr attr=...>``."""
    out = []
    for key, body in re.findall(rf'<tr {attr}="([^"]*)">(.*?)</tr>', html, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", body, flags=re.S)
        out.append(
            (unescape(key), [" ".join(unescape(re.sub(r"<[^>]+>", "", c)).split()) for c in cells])
        )
    return out


def get(client: TestClient, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return str(r.text)


def seed(services: Services) -> dict[str, Any]:
    ci, operator = token_id(services.db, "test-ci"), token_id(services.db, "test-operator")
    with services.db.transaction() as s:
        image = Image(name="debian-12", kernel="vmlinuz", initrd="initrd.img")
        m1, m2 = Machine(name="node1", state="active"), Machine(name="node2", state="deploying")
        s.add_all([image, m1, m2])
        s.flush()
        now = datetime.now(UTC)
        specs = [
            ("ci-ready", ci, "ready", m1.id, now + timedelta(hours=1, minutes=30), ""),
            ("op-deploying", operator, "deploying", m2.id, now + timedelta(hours=2), ""),
            ("ci-failed", ci, "failed", None, None, f"no machine fits {HOSTILE}"),
            ("op-released", operator, "released", None, None, ""),
            ("ci-pending", ci, "pending", None, now + timedelta(minutes=10), ""),
        ]
        made = {}
        for i, (label, owner, state, machine, expires, reason) in enumerate(specs):
            row = Allocation(
                owner_token_id=owner,
                state=state,
                machine_id=machine,
                image_id=image.id,
                expires_at=expires,
                failure_reason=reason,
                created_at=T0 + timedelta(minutes=i),
            )
            s.add(row)
            s.flush()
            made[label] = row.uuid
    return made


def test_allocations_newest_first_with_their_columns(
    signed_in: Clients, services: Services
) -> None:
    made = seed(services)
    found = rows(get(signed_in["operator"], "/ui/allocations"), "data-allocation")
    order = ["ci-pending", "op-released", "ci-failed", "op-deploying", "ci-ready"]
    assert [uuid for uuid, _ in found] == [made[label] for label in order]
    cells = dict(found)
    ready = cells[made["ci-ready"]]
    assert ready[0] == made["ci-ready"][:8]
    assert ready[1:5] == ["ready", "node1", "test-ci", "debian-12"]
    assert re.fullmatch(r"1h (29|30)m", ready[6])
    assert cells[made["op-deploying"]][1:4] == ["deploying", "node2", "test-operator"]
    assert cells[made["ci-failed"]][7] == f"no machine fits {HOSTILE}"
    assert cells[made["ci-failed"]][6] == ""  # final: no lease left
    assert cells[made["op-released"]][2] == "—"
    html = get(signed_in["operator"], "/ui/allocations")
    assert 'href="/ui/machines/node1"' in html
    assert HOSTILE not in html and "&lt;script&gt;" in html


def test_allocations_filter_by_state(signed_in: Clients, services: Services) -> None:
    made = seed(services)
    for state, labels in (("ready", ["ci-ready"]), ("failed", ["ci-failed"]), ("expired", [])):
        found = rows(get(signed_in["admin"], f"/ui/allocations?state={state}"), "data-allocation")
        assert [uuid for uuid, _ in found] == [made[label] for label in labels]
        assert all(cells[1] == state for _, cells in found)


@pytest.mark.parametrize("state", ["bogus", "ready,failed", "x" * 300])
def test_a_bad_state_is_a_422_page(signed_in: Clients, services: Services, state: str) -> None:
    r = signed_in["operator"].get("/ui/allocations", params={"state": state})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("text/html")
    hint = re.search(r'<p class="hint">Hint: (.*?)</p>', r.text)
    assert hint and "states: pending, deploying, ready, failed, released, expired" in hint.group(1)


def test_ci_sees_only_its_own_allocations(signed_in: Clients, services: Services) -> None:
    made = seed(services)
    html = get(signed_in["ci"], "/ui/allocations")
    found = [uuid for uuid, _ in rows(html, "data-allocation")]
    assert found == [made["ci-pending"], made["ci-failed"], made["ci-ready"]]
    assert made["op-deploying"] not in html and "test-operator" not in html
    assert rows(get(signed_in["ci"], "/ui/allocations?state=deploying"), "data-allocation") == []


def test_allocations_stop_at_two_hundred(signed_in: Clients, services: Services) -> None:
    ci = token_id(services.db, "test-ci")
    with services.db.transaction() as s:
        s.execute(
            insert(Allocation),
            [
                {
                    "uuid": f"00000000-0000-0000-0000-{i:012d}",
                    "owner_token_id": ci,
                    "state": "released",
                    "created_at": T0 + timedelta(seconds=i),
                    "updated_at": T0,
                    "lease_s": 60,
                    "attempts": 0,
                    "constraints": {},
                    "ssh_keys": [],
                    "root_device": {},
                    "user_data": "",
                    "failure_reason": "",
                    "request_hash": "",
                    "ssh_user": "root",
                    "excluded_machine_ids": [],
                }
                for i in range(205)
            ],
        )
    found = rows(get(signed_in["ci"], "/ui/allocations"), "data-allocation")
    assert [u for u, _ in found] == [f"00000000-0000-0000-0000-{i:012d}" for i in range(204, 4, -1)]


def test_allocation_statements_do_not_grow(signed_in: Clients, services: Services) -> None:
    ci = token_id(services.db, "test-ci")
    counts = []
    for count in (5, 50):
        with services.db.transaction() as s:
            image = Image(name=f"img{count}", kernel="k", initrd="i")
            s.add(image)
            s.flush()
            for i in range(count):
                machine = Machine(name=f"m{count}-{i}", state="active")
                s.add(machine)
                s.flush()
                s.add(
                    Allocation(
                        owner_token_id=ci,
                        state="ready",
                        machine_id=machine.id,
                        image_id=image.id,
                        expires_at=datetime.now(UTC),
                    )
                )
        get(signed_in["operator"], "/ui/allocations")
        with counting(services.db) as seen:
            html = get(signed_in["operator"], "/ui/allocations")
        assert len(rows(html, "data-allocation")) == (5 if count == 5 else 55)
        counts.append(len(seen))
    assert counts[0] == counts[1], counts


def test_images_list(signed_in: Clients, services: Services) -> None:
    with services.db.transaction() as s:
        s.add_all(
            [
                Image(
                    name="zeta-live",
                    kernel="k",
                    initrd="i",
                    arch="aarch64",
                    firmware="uefi",
                    created_at=T0,
                ),
                Image(
                    name="debian-12-disk",
                    kind="disk",
                    kernel="",
                    initrd="",
                    disk="d.raw.gz",
                    virtual_size=2_147_483_648,
                    configured_by="cloud-init",
                    os_family="debian",
                    os_version="12",
                    firmware="both",
                    created_at=T0,
                ),
                Image(
                    name=f"evil{HOSTILE}",
                    kind="disk",
                    kernel="",
                    initrd="",
                    configured_by="agent",
                    os_family=HOSTILE,
                    virtual_size=1500,
                    created_at=T0,
                ),
            ]
        )
    for role in ("ci", "operator"):
        html = get(signed_in[role], "/ui/images")
        found = rows(html, "data-image")
        assert [name for name, _ in found] == ["debian-12-disk", f"evil{HOSTILE}", "zeta-live"]
        cells = dict(found)
        assert cells["debian-12-disk"][1:7] == [
            "disk",
            "x86_64",
            "both",
            "debian 12",
            "cloud-init",
            "2.1 GB",
        ]
        assert cells["zeta-live"][1:7] == ["live", "aarch64", "uefi", "", "", ""]
        assert cells[f"evil{HOSTILE}"][4:7] == [HOSTILE, "agent", "1.5 kB"]
        assert HOSTILE not in html


def test_lists_are_pages_for_every_role(signed_in: Clients) -> None:
    for role in ("admin", "operator", "ci"):
        for path in ("/ui/allocations", "/ui/images"):
            html = get(signed_in[role], path)
            assert '<tr class="empty">' in html
            assert f"test-{role} ({role})" in html
