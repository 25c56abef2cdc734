"""A Redfish BMC configured through the product's own faces, against sushy-tools' emulator.

The API (machine create and patch), the inventory file (plan, apply, export) and the
CLI (``machines bmc-cert``) each set the BMC's certificate pin or ``tls_verify``; the
power calls that follow are real HTTPS to the emulator's self-signed certificate,
so a right pin powers the machine and a wrong one is refused before any password
is sent. The fingerprint ``bmc-cert`` shows is checked against openssl's own.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from provisiond.container import Services
from provisiond.drivers.power.redfish import format_fingerprint
from provisiond.models import Bmc
from tests.conftest import Api
from tests.support.daemon import Daemon, cli
from tests.support.redfish_emulator import RedfishEmulator, free_tcp_port, require_sushy

PASSWORD = "s3cret-Redfish-pw"
WRONG_PIN = "sha256:" + ":".join(["AB"] * 32)
YAML_HEADERS = {"content-type": "application/yaml"}


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RedfishEmulator]:
    require_sushy()
    emu = RedfishEmulator(tmp_path / "sushy", free_tcp_port(), password=PASSWORD)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def openssl_fingerprint(port: int) -> str:
    """The fingerprint as an operator would read it: openssl s_client | openssl x509."""
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    x509 = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
        input=shown.stdout,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # "sha256 Fingerprint=AB:CD:..." (the prefix's case differs between openssl versions)
    return "sha256:" + x509.stdout.strip().split("=", 1)[1].upper()


def _bmc(emu: RedfishEmulator, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "redfish",
        "address": "127.0.0.1",
        "port": emu.port,
        "username": emu.username,
        "password": PASSWORD,
        **extra,
    }


def _create(api: Api, name: str, bmc: dict[str, Any]) -> dict[str, Any]:
    r = api.operator.post("/api/v1/machines", json={"name": name, "bmc": bmc})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _power(api: Api, name: str, action: str = "on") -> Any:
    return api.operator.post(f"/api/v1/machines/{name}/power", json={"action": action})


def _stored_pin(services: Services, port: int) -> str:
    with services.db.read_session() as session:
        return session.exec(select(Bmc.cert_fingerprint).where(Bmc.port == port)).one()


# -- the API -------------------------------------------------------------------------


def test_machine_created_with_a_pin_is_powered(api: Api, emulator: RedfishEmulator) -> None:
    plain_hex = emulator.fingerprint.upper()  # no colons, upper case: normalised on the way in
    machine = _create(api, "rf1", _bmc(emulator, cert_fingerprint=plain_hex))
    pin = format_fingerprint(emulator.fingerprint)
    assert machine["bmc"]["cert_fingerprint"] == pin  # not a secret: shown
    assert machine["bmc"]["tls_verify"] == "fingerprint"
    assert PASSWORD not in json.dumps(machine) and machine["bmc"]["password_set"] is True

    r = _power(api, "rf1")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "on" and emulator.system()["PowerState"] == "On"
    assert api.operator.get("/api/v1/machines/rf1/power").json()["state"] == "on"


def test_a_wrong_pin_is_refused_before_credentials_are_sent(
    api: Api, emulator: RedfishEmulator
) -> None:
    _create(api, "rf2", _bmc(emulator, cert_fingerprint=WRONG_PIN))
    seen = emulator.requests()  # the fixture's own readiness checks
    r = _power(api, "rf2")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "bmc_certificate_mismatch"
    assert format_fingerprint(emulator.fingerprint) in error["message"]
    assert "openssl" in error["hint"]
    assert emulator.requests() == seen  # no request of ours got past the TLS handshake
    assert emulator.system()["PowerState"] == "Off"

    # Fixing the pin with PATCH is enough: the next call connects afresh.
    pin = format_fingerprint(emulator.fingerprint)
    r = api.operator.patch("/api/v1/machines/rf2", json={"bmc": {"cert_fingerprint": pin}})
    assert r.status_code == 200, r.text
    assert r.json()["bmc"]["cert_fingerprint"] == pin
    assert _power(api, "rf2").status_code == 200


@pytest.mark.parametrize(
    "fingerprint",
    ["ab" * 31, "zz" * 32, "sha1:AB:CD", "AB:CD:" + "01:" * 29],
)
def test_malformed_pins_are_refused_with_a_hint(
    api: Api, emulator: RedfishEmulator, fingerprint: str
) -> None:
    r = api.operator.post(
        "/api/v1/machines",
        json={"name": "rf3", "bmc": _bmc(emulator, cert_fingerprint=fingerprint)},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "bmc.cert_fingerprint" in error["message"] and "SHA-256" in error["message"]
    assert "bmc-cert" in error["hint"]
    assert api.operator.get("/api/v1/machines/rf3").status_code == 404


def test_tls_verify_takes_only_the_documented_choices(
    api: Api, emulator: RedfishEmulator, services: Services
) -> None:
    for bad in ("insecure", "none", ""):
        r = api.operator.post(
            "/api/v1/machines", json={"name": "rf4", "bmc": _bmc(emulator, tls_verify=bad)}
        )
        assert r.status_code == 422, (bad, r.text)
        assert "tls_verify" in r.json()["error"]["message"]

    # tls_verify=system reaches the driver: the emulator's self-signed certificate is
    # then checked against the system CA store and fails, with a hint to pin it instead.
    machine = _create(api, "rf4", _bmc(emulator, tls_verify="system"))
    assert machine["bmc"]["tls_verify"] == "system" and machine["bmc"]["cert_fingerprint"] == ""
    r = _power(api, "rf4")
    assert r.status_code == 502 and r.json()["error"]["code"] == "bmc_tls_error", r.text
    assert "pin" in r.json()["error"]["hint"]

    r = api.operator.patch("/api/v1/machines/rf4", json={"bmc": {"tls_verify": "fingerprint"}})
    assert r.status_code == 200 and r.json()["bmc"]["tls_verify"] == "fingerprint"
    r = _power(api, "rf4")
    assert r.json()["error"]["code"] == "bmc_tls_not_configured", r.text
    assert "bmc-cert" in r.json()["error"]["hint"]
    assert _stored_pin(services, emulator.port) == ""


def test_bmc_certificate_is_shown_and_pinned_only_on_request(
    api: Api, emulator: RedfishEmulator, services: Services
) -> None:
    _create(api, "rf5", _bmc(emulator))  # no pin, no tls_verify: every power call refuses
    assert _power(api, "rf5").json()["error"]["code"] == "bmc_tls_not_configured"

    assert api.ci.get("/api/v1/machines/rf5/bmc/certificate").status_code == 403
    r = api.operator.get("/api/v1/machines/rf5/bmc/certificate")
    assert r.status_code == 200, r.text
    shown = r.json()
    expected = openssl_fingerprint(emulator.port)
    assert shown["fingerprint"] == expected == format_fingerprint(emulator.fingerprint)
    assert shown["pinned"] == "" and shown["matches_pin"] is False
    assert shown["subject"] == "CN=127.0.0.1" and shown["self_signed"] is True
    assert shown["not_after"] > shown["not_before"]
    assert _stored_pin(services, emulator.port) == ""  # showing it pinned nothing

    # Pinning names the fingerprint the operator confirmed; the BMC must still present it.
    r = api.operator.put("/api/v1/machines/rf5/bmc/certificate", json={"fingerprint": WRONG_PIN})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "bmc_certificate_changed"
    assert _stored_pin(services, emulator.port) == ""
    r = api.operator.put(
        "/api/v1/machines/rf5/bmc/certificate", json={"fingerprint": emulator.fingerprint}
    )
    assert r.status_code == 200, r.text
    assert r.json()["pinned"] == expected and r.json()["matches_pin"] is True
    assert _stored_pin(services, emulator.port) == expected
    assert _power(api, "rf5").status_code == 200
    events = api.ci.get("/api/v1/events", params={"machine": "rf5"}).json()
    assert any(e["event"] == "bmc_certificate_pinned" for e in events), events


def test_bmc_certificate_of_a_bmc_without_tls_is_a_clear_refusal(api: Api) -> None:
    _create(api, "ipmi1", {"driver": "ipmi", "address": "127.0.0.1", "port": 623, "password": "x"})
    r = api.operator.get("/api/v1/machines/ipmi1/bmc/certificate")
    assert r.status_code == 409 and "redfish" in r.json()["error"]["hint"], r.text
    _create(api, "dead", {"driver": "redfish", "address": "127.0.0.1", "port": free_tcp_port()})
    r = api.operator.get("/api/v1/machines/dead/bmc/certificate")
    assert r.status_code == 502 and r.json()["error"]["code"] == "bmc_unreachable", r.text


# -- the inventory file ----------------------------------------------------------------


def _inventory(emu: RedfishEmulator, bmc_extra: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        machines:
          - name: rf6
            bmc: {{driver: redfish, address: 127.0.0.1, port: {emu.port},
                  username: {emu.username}, password: {PASSWORD}{bmc_extra}}}
        """
    )


def test_inventory_plans_applies_and_exports_the_pin(api: Api, emulator: RedfishEmulator) -> None:
    colons = ":".join(emulator.fingerprint[i : i + 2] for i in range(0, 64, 2))
    text = _inventory(emulator, f", cert_fingerprint: '{colons}'")
    r = api.operator.post("/api/v1/inventory/apply", content=text, headers=YAML_HEADERS)
    assert r.status_code == 200, r.text
    pin = format_fingerprint(emulator.fingerprint)
    assert api.ci.get("/api/v1/machines/rf6").json()["bmc"]["cert_fingerprint"] == pin
    assert _power(api, "rf6").status_code == 200

    exported = api.operator.get("/api/v1/inventory/export").text
    bmc = yaml.safe_load(exported)["machines"][0]["bmc"]
    assert bmc["cert_fingerprint"] == pin and bmc["tls_verify"] == "fingerprint"
    assert PASSWORD not in exported
    r = api.operator.post("/api/v1/inventory/plan", content=exported, headers=YAML_HEADERS)
    assert r.json()["summary"]["update"] == 0, r.text  # the export round-trips unchanged

    # A changed pin is planned as a change of that one field.
    changed = _inventory(emulator, f", cert_fingerprint: '{WRONG_PIN}'")
    r = api.operator.post("/api/v1/inventory/plan", content=changed, headers=YAML_HEADERS)
    fields = r.json()["changes"][0]["fields"]
    assert fields == {"bmc.cert_fingerprint": {"from": pin, "to": WRONG_PIN}}, r.text
    r = api.operator.post("/api/v1/inventory/apply", content=changed, headers=YAML_HEADERS)
    assert r.status_code == 200
    assert _power(api, "rf6").json()["error"]["code"] == "bmc_certificate_mismatch"


def test_inventory_refuses_a_bad_pin_with_its_line(api: Api, emulator: RedfishEmulator) -> None:
    text = _inventory(emulator, ", cert_fingerprint: 'not-a-fingerprint', tls_verify: off")
    r = api.operator.post("/api/v1/inventory/apply", content=text, headers=YAML_HEADERS)
    assert r.status_code == 422, r.text
    problems = {p["path"]: p for p in r.json()["error"]["problems"]}
    assert "SHA-256" in problems["machines[0].bmc.cert_fingerprint"]["message"]
    assert problems["machines[0].bmc.cert_fingerprint"]["line"] == 5
    assert "tls_verify" in " ".join(problems)
    assert api.ci.get("/api/v1/machines/rf6").status_code == 404


def test_inventory_redfish_bmc_defaults_to_port_443(api: Api) -> None:
    text = "machines:\n  - name: rf7\n    bmc: {driver: redfish, address: 127.0.0.1}\n"
    r = api.operator.post("/api/v1/inventory/apply", content=text, headers=YAML_HEADERS)
    assert r.status_code == 200, r.text
    bmc = api.ci.get("/api/v1/machines/rf7").json()["bmc"]
    assert bmc["port"] == 443 and bmc["tls_verify"] == "fingerprint"
    r = api.operator.post("/api/v1/inventory/plan", content=text, headers=YAML_HEADERS)
    assert r.json()["summary"]["update"] == 0, r.text


# -- the CLI against a running daemon --------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path / "data")
    try:
        daemon.prepare()
        daemon.start()
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM)


def test_cli_bmc_cert_shows_then_pins_on_request(
    daemon: Daemon, emulator: RedfishEmulator, tmp_path: Path
) -> None:
    env = {**daemon.env, "RF_PASSWORD": PASSWORD}
    inventory = tmp_path / "rack.yaml"
    inventory.write_text(
        _inventory(emulator, "").replace(f"password: {PASSWORD}", "password_env: RF_PASSWORD")
    )
    applied = cli("inventory", "apply", str(inventory), env=env)
    assert applied.returncode == 0, applied.stderr

    refused = cli("machines", "power", "rf6", "on", env=env)
    assert refused.returncode == 1 and "bmc_tls_not_configured" in refused.stderr
    assert "bmc-cert" in refused.stderr

    expected = openssl_fingerprint(emulator.port)
    shown = cli("machines", "bmc-cert", "rf6", env=env)
    assert shown.returncode == 0, shown.stderr
    assert expected in shown.stdout and "CN=127.0.0.1" in shown.stdout
    assert "--pin" in shown.stdout  # says how to pin, and did not
    still = cli("machines", "power", "rf6", "on", env=env)
    assert still.returncode == 1 and "bmc_tls_not_configured" in still.stderr

    as_json = json.loads(cli("machines", "bmc-cert", "rf6", "--json", env=env).stdout)
    assert as_json["fingerprint"] == expected and as_json["pinned"] == ""

    wrong = cli("machines", "bmc-cert", "rf6", "--pin", "--expect", WRONG_PIN, env=env)
    assert wrong.returncode == 1 and "nothing was pinned" in wrong.stderr
    pinned = cli("machines", "bmc-cert", "rf6", "--pin", "--expect", emulator.fingerprint, env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert re.search(rf"pinned\s+{re.escape(expected)}", pinned.stdout), pinned.stdout

    on = cli("machines", "power", "rf6", "on", env=env)
    assert on.returncode == 0, on.stderr
    assert "rf6: power on" in on.stdout and emulator.system()["PowerState"] == "On"
    exported = cli("inventory", "export", env=env).stdout
    assert expected in exported
