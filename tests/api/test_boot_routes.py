"""The unauthenticated boot routes through the real app (TestClient), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import func, select

from provisiond.api import create_app
from provisiond.api.routers import boot as boot_router
from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.inventory import images as image_service
from provisiond.lifecycle import Ev, advance
from provisiond.models import Allocation, Deployment, Event, Image, Machine, Nic
from provisiond.netboot.images import ImageStore

MAC = "52:54:00:aa:bb:cc"
PAYLOAD = random.Random(4).randbytes(1000)


def boot_app(services: Services) -> FastAPI:
    app = create_app(services)
    if not any(getattr(r, "path", "") == "/boot/ipxe" for r in app.routes):
        app.include_router(boot_router.router)  # until the lead registers the router
    return app


@pytest.fixture
def app(services: Services) -> FastAPI:
    return boot_app(services)


def client_at(app: FastAPI, address: str = "10.0.0.5") -> TestClient:
    return TestClient(app, raise_server_exceptions=False, client=(address, 40000))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with client_at(app) as c:
        yield c


@pytest.fixture
def store(services: Services, tmp_path: Path) -> ImageStore:
    src = tmp_path / "src"
    src.mkdir()
    (src / "vmlinuz").write_bytes(PAYLOAD)
    (src / "initrd.img").write_bytes(b"initrd-bytes")
    store = ImageStore(services.settings.images_path)
    with services.db.transaction() as s:
        for name, template in (("inspect", ""), ("debian12", "debian")):
            image_service.add_image(
                s,
                store,
                name=name,
                files={"kernel": src / "vmlinuz", "initrd": src / "initrd.img"},
                kernel_args="console=ttyS0",
                os_template=template,
                actor="test",
            )
    return store


def test_entry_chains_to_the_mac_script(client: TestClient) -> None:
    r = client.get("/boot/ipxe")
    assert r.status_code == 200 and r.text.startswith("#!ipxe\n")
    assert "chain http://testserver/boot/${netX/mac}.ipxe" in r.text


def test_unknown_mac_enrolls_exactly_once(
    client: TestClient, services: Services, store: ImageStore
) -> None:
    first = client.get(f"/boot/{MAC.replace(':', '-').upper()}.ipxe")
    second = client.get(f"/boot/{MAC}.ipxe")
    assert first.status_code == 200 and second.status_code == 200, first.text
    assert "/images/inspect/vmlinuz" in first.text and "/images/inspect/vmlinuz" in second.text
    with services.db.read_session() as s:
        assert s.exec(select(func.count()).select_from(Machine)).one() == 1
        nic = s.exec(select(Nic)).one()
        assert nic.mac == MAC and nic.pxe
        enrolls = s.exec(select(Event).where(Event.event == "enroll")).all()
        assert [e.message for e in enrolls] == ["discovered via PXE"]
        assert s.exec(select(Machine.state)).one() == "inspecting"


def test_bad_macs_are_400(client: TestClient) -> None:
    for bad in ("zz:zz:zz:zz:zz:zz", "5254", "52:54:00:aa:bb:cc:dd", "x" * 5000, "%00"):
        r = client.get(f"/boot/{bad}.ipxe")
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert r.json()["error"]["hint"]


def _deploying(services: Services, ip: str, ssh_key: str = "ssh-ed25519 AAAAC3 test@x") -> str:
    with services.db.transaction() as s:
        m = Machine(name="n1")
        advance(s, m, Ev.ENROLL, actor="test")
        assert m.id is not None
        s.add(Nic(machine_id=m.id, mac=MAC, ip_address=ip))
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        token, _ = create_token(s, name="owner", role="ci")
        image_id = s.exec(select(Image.id).where(Image.name == "debian12")).one()
        assert token.id is not None
        alloc = Allocation(
            owner_token_id=token.id,
            image_id=image_id,
            machine_id=m.id,
            ssh_keys=[ssh_key],
            state="deploying",
        )
        s.add(alloc)
        s.flush()
        deploy.start_deploy(
            s,
            m,
            allocation=alloc,
            image_id=image_id,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
        return m.uuid


def test_deploy_script_and_seed_access_control(
    app: FastAPI, client: TestClient, services: Services, store: ImageStore
) -> None:
    uuid = _deploying(services, "10.0.0.5")
    script = client.get(f"/boot/{MAC}.ipxe").text
    assert "/images/debian12/vmlinuz initrd=initrd.img console=ttyS0" in script
    assert f"ds=nocloud-net;s=http://testserver/meta/{uuid}/" in script
    user = client.get(f"/meta/{uuid}/user-data")
    assert user.status_code == 200 and user.text.startswith("#cloud-config\n")
    assert "ssh-ed25519 AAAAC3 test@x" in user.text
    with services.db.read_session() as s:
        record = s.exec(select(Deployment)).one()
    # The per-deploy key and the phone-home URL with its token; never the agent token.
    assert record.ssh_public_key in user.text
    token = deploy.callback_token(services.secrets, record.uuid)
    assert f"/boot/callback/{uuid}?token={token}" in user.text
    assert "AGENT_TOKEN" not in user.text
    meta = client.get(f"/meta/{uuid}/meta-data")
    assert meta.status_code == 200 and f"instance-id: {uuid}" in meta.text
    assert client.get(f"/meta/{uuid}/vendor-data").status_code == 200
    assert "d-i netcfg/get_hostname string n1" in client.get(f"/meta/{uuid}/preseed.cfg").text
    assert client.get(f"/meta/{uuid}/kickstart.cfg").status_code == 404  # debian: no kickstart
    with client_at(app, "10.0.0.6") as stranger:
        r = stranger.get(f"/meta/{uuid}/user-data")
        assert r.status_code == 403 and "own address" in r.json()["error"]["message"]
    assert client.get(f"/meta/{uuid}/passwd").status_code == 404
    assert client.get("/meta/not-a-uuid/user-data").status_code == 404
    other = uuid[:-1] + ("1" if uuid[-1] == "0" else "0")  # another machine's uuid, always
    assert client.get(f"/meta/{other}/user-data").status_code in (404, 403)
    with services.db.transaction() as s:
        m = s.exec(select(Machine)).one()
        advance(s, m, Ev.FAIL, actor="test", reason="stop")
    r = client.get(f"/meta/{uuid}/user-data")
    assert r.status_code == 409 and "not deploying" in r.json()["error"]["message"]


def test_os_callback_pins_the_host_key_and_moves_to_installing_agent(
    app: FastAPI, client: TestClient, services: Services, store: ImageStore
) -> None:
    uuid = _deploying(services, "10.0.0.5")
    with services.db.read_session() as s:
        record = s.exec(select(Deployment)).one()
    token = deploy.callback_token(services.secrets, record.uuid)
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9f root@vm"
    form = {"pub_key_ed25519": host_key, "instance_id": uuid, "hostname": "n1"}
    assert client.post(f"/boot/callback/{uuid}?token=wrong", data=form).status_code == 401
    assert client.post(f"/boot/callback/{uuid}", data=form).status_code == 401
    bad = client.post(f"/boot/callback/{uuid}?token={token}", data={"pub_key_ed25519": "x"})
    assert bad.status_code == 400 and "host key" in bad.json()["error"]["message"]
    huge = client.post(f"/boot/callback/{uuid}?token={token}", content=b"a" * 20000)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    with client_at(app, "10.0.0.5") as machine:
        r = machine.post(f"/boot/callback/{uuid}?token={token}", data=form)
    assert r.status_code == 200, r.text
    assert r.json() == {"machine": "n1", "state": "installing_agent", "address": "10.0.0.5"}
    with services.db.read_session() as s:
        m = s.exec(select(Machine)).one()
        record = s.exec(select(Deployment)).one()
        assert m.ssh_host_key == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9f"
        assert record.host_key == m.ssh_host_key and record.address == "10.0.0.5"
        assert "os_callback" in record.phases
    again = client.post(f"/boot/callback/{uuid}?token={token}", data=form)
    assert again.status_code == 409


def test_seed_without_a_recorded_address_is_refused(
    client: TestClient, services: Services, store: ImageStore
) -> None:
    uuid = _deploying(services, "")
    r = client.get(f"/meta/{uuid}/user-data")
    assert r.status_code == 403 and "ip_address" in r.json()["error"]["hint"]


def test_image_files_with_ranges(client: TestClient, store: ImageStore) -> None:
    url = "/images/debian12/vmlinuz"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    r = client.get(url)
    assert r.status_code == 200 and r.content == PAYLOAD
    assert r.headers["content-length"] == "1000" and r.headers["etag"] == f'"{sha}"'
    assert r.headers["accept-ranges"] == "bytes"
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=100-199": (100, 200),
        "bytes=-10": (990, 1000),
        "bytes=990-": (990, 1000),
        "bytes=995-5000": (995, 1000),
    }
    for header, (lo, hi) in cases.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == PAYLOAD[lo:hi], header
        assert r.headers["content-range"] == f"bytes {lo}-{hi - 1}/1000"
        assert r.headers["content-length"] == str(hi - lo)
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == "bytes */1000"
    for ignored in ("bytes=0-1,5-6", "lines=1-2", "bytes=9-3", "bytes=abc"):
        r = client.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == PAYLOAD, ignored
    r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == 1000
    r = client.head(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == b"" and r.headers["content-length"] == "10"


def test_no_path_outside_the_store(client: TestClient, store: ImageStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (store.root / "debian12" / "evil").symlink_to(secret)
    (store.root / "linked").symlink_to(store.root / "debian12")
    (store.root / "outside").symlink_to(tmp_path)
    attempts = [
        "/images/debian12/evil",
        "/images/linked/vmlinuz",
        "/images/outside/secret.txt",
        "/images/debian12/..",
        "/images/debian12/%2e%2e",
        "/images/%2e%2e/secret.txt",
        "/images/debian12/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/images/debian12/..%2fsecret.txt",
        "/images/..%2f..%2f/etc",
        "/images/debian12/.sha256.json",
        "/images/debian12/%2fetc%2fpasswd",
        "/images//etc/passwd",
        "/images/debian12//etc/passwd",
        "/images/debian12/../../secret.txt",
        "/images/debian12/vmlinuz%00",
        "/images/debian12/nope",
    ]
    for path in attempts:
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
        assert b"top secret" not in r.content and b"root:" not in r.content, path
    assert client.get("/images/debian12/evil").status_code == 403
    assert client.get("/images/linked/vmlinuz").status_code == 403


HOSTILE_PATHS = [
    "/boot/{}.ipxe",
    "/images/{}/vmlinuz",
    "/images/debian12/{}",
    "/meta/{}/user-data",
    "/meta/{}/{}",
    "/boot/{}",
]
HOSTILE_BITS = [
    "..",
    "%2e%2e",
    "%2e%2e%2f",
    "../../etc/passwd",
    "..%5c..%5c",
    "%00",
    "%ff%fe",
    "~root",
    "zz:zz:zz:zz:zz:zz",
    "52:54:00:aa:bb",
    "52:54:00:aa:bb:cc:dd",
    "ä",
    "%c0%ae%c0%ae",
    "${net0/mac}",
    "{{7*7}}",
    "'; DROP TABLE machine;--",
    "\\",
    "%2f",
    "con",
    ".sha256.json",
]


def test_two_thousand_hostile_requests_never_500(
    client: TestClient, store: ImageStore, services: Services
) -> None:
    rng = random.Random(1234)
    started = time.monotonic()
    statuses: dict[int, int] = {}
    for i in range(2000):
        template = rng.choice(HOSTILE_PATHS)
        parts = [
            rng.choice(HOSTILE_BITS) + ("x" * rng.choice([0, 1, 300, 5000]) if i % 7 == 0 else "")
            if rng.random() < 0.7
            else os.urandom(rng.randint(1, 12)).hex()
            for _ in range(template.count("{}"))
        ]
        headers = {}
        if i % 5 == 0:
            headers["X-Junk"] = "A" * rng.choice([100, 8000, 64000])
        if i % 3 == 0:
            headers["Range"] = rng.choice(
                ["bytes=-", "bytes=99999999999999999999-", "bytes=-1", "x" * 500]
            )
        method = "HEAD" if i % 11 == 0 else "GET"
        r = client.request(method, template.format(*parts), headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (template, parts, r.status_code, r.text[:300])
    assert time.monotonic() - started < 60
    assert set(statuses) - {200, 206, 400, 403, 404, 405, 409, 416, 422} == set(), statuses
    with services.db.read_session() as s:  # hex parts may have been valid MACs: at most enrolls
        assert s.exec(select(func.count()).select_from(Machine)).one() < 100
