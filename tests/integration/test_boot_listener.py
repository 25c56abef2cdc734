"""A provisioning network's boot listener serves the boot routes only (issue 11, defect 5).

A real ``provisiond serve`` with one network whose boot listener is on another
loopback address and port than the main listener. The network is on ``lo`` with
DHCP off, so its supervised dnsmasq binds nothing (``except-interface=lo``) and no
namespace is needed. Every machine being booted can reach the boot listener, so the
admin API, /docs and /metrics must answer 404 there (the usual error shape), while
the routes a booting machine needs work, and the main listener still serves all.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from provisiond.rack.scenario import free_port
from tests.support.daemon import Daemon

pytestmark = pytest.mark.slow

MAC = "52:54:00:b0:07:01"


@dataclass
class Listeners:
    daemon: Daemon
    boot: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.daemon.admin_token}"}


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    if not Path("/usr/lib/ipxe/undionly.kpxe").is_file():
        pytest.skip("the ipxe package is missing (dnsmasq's TFTP root copies its binaries)")
    root = tmp_path_factory.mktemp("boot-listener")
    address = f"127.{random.randint(64, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"
    port = free_port()
    config = root / "provisiond.toml"
    config.write_text(
        "[[networks]]\n"
        'name = "loop"\n'
        'interface = "lo"\n'
        'subnet = "127.0.0.0/8"\n'
        f'boot_address = "{address}"\n'
        f"http_port = {port}\n"
        'dhcp_mode = "off"\n'
        'dnsmasq_user = "root"\n'
    )
    daemon = Daemon(root / "data", extra_env={"PROVISIOND_CONFIG": str(config)})
    daemon.data_dir.mkdir(parents=True)
    daemon.prepare()
    try:
        daemon.start(timeout=30)
        yield Listeners(daemon, f"http://{address}:{port}")
    finally:
        daemon.stop(signal.SIGTERM)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/machines"),
        ("POST", "/api/v1/machines"),
        ("GET", "/api/v1/tokens"),
        ("DELETE", "/api/v1/machines/pxe-525400b00701"),
        ("GET", "/api/v1/events"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/api/v1/agent"),
    ],
)
def test_the_admin_api_is_not_on_the_boot_listener(
    listeners: Listeners, method: str, path: str
) -> None:
    r = httpx.request(method, listeners.boot + path, headers=listeners.admin, json={}, timeout=10)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["hint"], error


def test_the_boot_routes_are_on_the_boot_listener(listeners: Listeners) -> None:
    boot = listeners.boot
    assert httpx.get(boot + "/healthz", timeout=10).json()["status"] == "ok"
    entry = httpx.get(boot + "/boot/ipxe", timeout=10)
    assert entry.status_code == 200
    assert f"chain {boot}/boot/${{netX/mac}}.ipxe" in entry.text
    script = httpx.get(f"{boot}/boot/{MAC}.ipxe", timeout=10)  # enrolls: no inspect image
    assert script.status_code == 200 and script.text.startswith("#!ipxe\n"), script.text
    assert "no inspection image" in script.text
    # each route answers for itself: its own errors, not the listener's 404
    machines = httpx.get(
        listeners.daemon.url + "/api/v1/machines", headers=listeners.admin, timeout=10
    ).json()
    uuid = next(m["uuid"] for m in machines if m["name"] == "pxe-525400b00701")
    r = httpx.get(f"{boot}/meta/{uuid}/user-data", timeout=10)
    assert r.status_code == 409 and "not deploying" in r.json()["error"]["message"]
    r = httpx.get(f"{boot}/images/nothing/vmlinuz", timeout=10)
    assert r.status_code == 404 and "image store" in r.json()["error"]["message"]
    r = httpx.post(f"{boot}/boot/callback/{uuid}?token=x", json={}, timeout=10)
    assert r.status_code == 401
    r = httpx.post(f"{boot}/api/v1/agent/{uuid}/heartbeat", json={}, timeout=10)
    assert r.status_code == 401
    # the enrollment is counted against the network whose listener it came in on
    events = httpx.get(
        listeners.daemon.url + "/api/v1/events",
        params={"machine": "pxe-525400b00701", "event": "enroll"},
        headers=listeners.admin,
        timeout=10,
    ).json()
    assert [e["details"].get("network") for e in events] == ["loop"]


def test_the_main_listener_still_serves_everything(listeners: Listeners) -> None:
    main = listeners.daemon.url
    r = httpx.get(main + "/api/v1/machines", headers=listeners.admin, timeout=10)
    assert r.status_code == 200
    assert httpx.get(main + "/docs", timeout=10).status_code == 200
    assert httpx.get(main + "/metrics", timeout=10).status_code == 200
    assert httpx.get(main + "/boot/ipxe", timeout=10).status_code == 200


def test_both_servers_stop_on_sigterm(listeners: Listeners) -> None:
    daemon = listeners.daemon
    assert daemon.stop(signal.SIGTERM) == 0
    log = daemon.log_text()
    assert "provisiond_stopped" in log and "Traceback" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(listeners.boot + "/healthz", timeout=2)
