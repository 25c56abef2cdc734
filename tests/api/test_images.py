from __future__ import annotations

from typing import Any

from sqlmodel import select

from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.lifecycle import Ev, advance
from provisiond.models import Allocation, Image, Machine
from tests.conftest import Api

IMG = "/api/v1/images"
SUM = "ab" * 32


def image(name: str = "debian12", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kernel": "debian12/vmlinuz", "initrd": "debian12/initrd.img", **extra}


def test_image_crud(api: Api) -> None:
    r = api.operator.post(IMG, json=image(kind="disk", sha256={"kernel": SUM}, kernel_args="quiet"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "disk" and body["sha256"] == {"kernel": SUM} and body["arch"] == "x86_64"
    assert api.ci.get(f"{IMG}/debian12").json() == body
    r = api.operator.patch(
        f"{IMG}/debian12", json={"rootfs": "debian12/root.squashfs", "kind": "live"}
    )
    assert r.status_code == 200 and r.json()["rootfs"] == "debian12/root.squashfs"
    assert r.json()["kernel_args"] == "quiet"
    assert [i["name"] for i in api.ci.get(IMG).json()] == ["debian12"]
    assert api.operator.delete(f"{IMG}/debian12").status_code == 204
    assert api.ci.get(f"{IMG}/debian12").status_code == 404


def test_image_bad_input(api: Api) -> None:
    cases = [
        (image(kind="iso"), "kind"),
        (image(kernel="../../etc/shadow"), "kernel"),
        (image(initrd="/boot/initrd"), "initrd"),
        (image(kernel=""), "kernel"),
        (image(sha256={"kernel": "xyz"}), "sha256.kernel"),
        (image(sha256={"bios": SUM}), "sha256.bios.[key]"),
        (image(arch="X86 64"), "arch"),
        ({"name": "x"}, "kernel"),
    ]
    for body, path in cases:
        r = api.operator.post(IMG, json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["hint"] and path in {p["path"] for p in err["problems"]}, (path, err)
    api.operator.post(IMG, json=image())
    assert api.operator.post(IMG, json=image()).status_code == 409
    assert api.operator.patch(f"{IMG}/debian12", json={"kernel": None}).status_code == 422
    assert api.operator.patch(f"{IMG}/debian12", json={"kernel": "a/../../b"}).status_code == 422
    assert api.ci.post(IMG, json=image("other")).status_code == 403
    assert api.ci.delete(f"{IMG}/debian12").status_code == 403


def test_image_used_by_an_allocation_is_kept(api: Api, services: Services) -> None:
    assert api.operator.post(IMG, json=image()).status_code == 201
    with services.db.transaction() as s:
        token, _ = create_token(s, name="runner", role="ci")
        image_id = s.exec(select(Image.id)).one()
        assert token.id is not None
        s.add(Allocation(owner_token_id=token.id, image_id=image_id, state="released"))
    r = api.operator.delete(f"{IMG}/debian12")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert "1 allocation" in err["message"] and "new one" in err["hint"]
    assert api.ci.get(f"{IMG}/debian12").status_code == 200


def test_image_used_by_a_deploy_is_kept(api: Api, services: Services) -> None:
    assert api.operator.post(IMG, json=image()).status_code == 201
    with services.db.transaction() as s:
        image_id = s.exec(select(Image.id)).one()
        m = Machine(name="m1")
        advance(s, m, Ev.ENROLL, actor="test")
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        deploy.start_deploy(
            s,
            m,
            allocation=None,
            image_id=image_id,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
    r = api.operator.delete(f"{IMG}/debian12")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert "1 deploy(s), 1 of them running" in err["message"] and "new one" in err["hint"]
