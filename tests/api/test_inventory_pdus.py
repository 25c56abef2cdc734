"""A PDU's driver settings and SNMP secrets in the inventory file (SQLite and PostgreSQL).

The secrets are write-only, as a BMC's password: given in clear or as ``<key>_env``,
stored encrypted in the PDU's one secret (what the apc_snmp driver reads back through
provisiond.pdus.access), never shown in a plan, a problem, the API or an export.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import yaml
from sqlmodel import select

from provisiond.container import Services
from provisiond.inventory.spec import env_names
from provisiond.models import Pdu
from provisiond.pdus.access import pdu_target
from tests.api.test_inventory import applied, changes, export, post, problems
from tests.conftest import Api

COMMUNITY = "rack-community-7f3a"
AUTH, PRIV = "auth-key-secret-1", "priv-key-secret-2"

V2C = textwrap.dedent(
    """\
    racks:
      - {name: r1, u_height: 10, power_budget_watts: 2000}
    pdus:
      - name: pdu1
        rack: r1
        mgmt_address: 127.0.0.1
        driver: apc_snmp
        snmp_port: 16161
        snmp_version: "2c"
        snmp_community_env: PDU_COMMUNITY
        outlets: 4
    """
)
V3 = textwrap.dedent(
    """\
    pdus:
      - name: pdu3
        mgmt_address: 127.0.0.1
        driver: apc_snmp
        snmp_version: "3"
        snmp_username: pduadmin
        snmp_auth_protocol: sha256
        snmp_priv_protocol: aes128
        snmp_auth_key_env: PDU_AUTH
        snmp_priv_key_env: PDU_PRIV
        outlets: 2
    """
)


def with_env(api: Api, route: str, text: str, env: dict[str, str]) -> Any:
    body = json.dumps({"yaml": text, "env": env})
    return api.operator.post(
        f"/api/v1/inventory/{route}", content=body, headers={"content-type": "application/json"}
    )


def stored(services: Services, name: str) -> Pdu:
    with services.db.read_session() as session:
        return session.exec(select(Pdu).where(Pdu.name == name)).one()


def test_settings_and_community_env_are_stored_and_never_shown(
    api: Api, services: Services
) -> None:
    r = with_env(api, "apply", V2C, {"PDU_COMMUNITY": COMMUNITY})
    assert r.status_code == 200, r.text
    assert COMMUNITY not in r.text
    fields = changes(r.json())[("pdu", "pdu1")]["fields"]
    assert fields["snmp_community"] == {"from": None, "to": "(new, hidden)"}
    assert fields["driver"] == {"from": None, "to": "apc_snmp"}
    pdu = stored(services, "pdu1")
    assert (pdu.driver, pdu.snmp_port, pdu.snmp_version) == ("apc_snmp", 16161, "2c")
    assert pdu.secret_encrypted and COMMUNITY not in pdu.secret_encrypted
    # What the driver gets: the community, decrypted only there.
    target = pdu_target(pdu, services.secrets, timeout=1.0)
    assert (target.address, target.port, target.community) == ("127.0.0.1", 16161, COMMUNITY)

    shown = api.operator.get("/api/v1/pdus/pdu1")
    assert shown.status_code == 200 and shown.json()["secret_set"] is True
    assert COMMUNITY not in shown.text

    exported = export(api)
    assert COMMUNITY not in exported and "snmp_community" not in exported
    pdu1 = yaml.safe_load(exported)["pdus"][0]
    assert (pdu1["driver"], pdu1["snmp_port"], pdu1["snmp_version"]) == ("apc_snmp", 16161, "2c")
    assert yaml.safe_load(exported)["racks"][0]["power_budget_watts"] == 2000
    # The export keeps the stored community: it re-applies as unchanged, as does the file
    # with the same community again.
    assert applied(api, exported)["summary"]["update"] == 0
    same = with_env(api, "plan", V2C, {"PDU_COMMUNITY": COMMUNITY})
    assert same.json()["summary"] == {"create": 0, "update": 0, "unchanged": 2, "delete": 0}
    assert stored(services, "pdu1").secret_encrypted == pdu.secret_encrypted

    # A new community is an update, still hidden.
    r = with_env(api, "apply", V2C, {"PDU_COMMUNITY": "another-community"})
    assert r.status_code == 200 and "another-community" not in r.text
    fields = changes(r.json())[("pdu", "pdu1")]["fields"]
    assert fields == {"snmp_community": {"from": "(hidden)", "to": "(new, hidden)"}}
    target = pdu_target(stored(services, "pdu1"), services.secrets, timeout=1.0)
    assert target.community == "another-community"


def test_v3_keys_by_reference_keep_each_other(api: Api, services: Services) -> None:
    r = with_env(api, "apply", V3, {"PDU_AUTH": AUTH, "PDU_PRIV": PRIV})
    assert r.status_code == 200, r.text
    assert AUTH not in r.text and PRIV not in r.text
    target = pdu_target(stored(services, "pdu3"), services.secrets, timeout=1.0)
    assert (target.version, target.username, target.auth_protocol) == ("3", "pduadmin", "sha256")
    assert (target.auth_key, target.priv_key) == (AUTH, PRIV)
    # Only the auth key given, in clear: the priv key stays.
    one = V3.replace("snmp_auth_key_env: PDU_AUTH", "snmp_auth_key: new-auth-key-3").replace(
        "    snmp_priv_key_env: PDU_PRIV\n", ""
    )
    r = post(api, "apply", one)
    assert r.status_code == 200 and "new-auth-key-3" not in r.text, r.text
    target = pdu_target(stored(services, "pdu3"), services.secrets, timeout=1.0)
    assert (target.auth_key, target.priv_key) == ("new-auth-key-3", PRIV)
    exported = export(api)
    assert "key" not in exported.replace("snmp_priv_protocol", "").replace("snmp_auth_protocol", "")


def test_bad_settings_and_references_are_problems_without_secrets(api: Api) -> None:
    r = with_env(api, "plan", V3, {"PDU_AUTH": "short"})
    assert problems(r) == [
        (9, "pdus[0].snmp_auth_key_env",
         "environment variable PDU_AUTH must hold 8 to 256 characters"),
        (10, "pdus[0].snmp_priv_key_env",
         "environment variable PDU_PRIV is not set where the file was applied from"),
    ]  # fmt: skip
    assert "short" not in r.text
    bad = V3.replace("apc_snmp", "apc_snmpp").replace("    snmp_username: pduadmin\n", "")
    found = problems(with_env(api, "plan", bad, {"PDU_AUTH": AUTH, "PDU_PRIV": PRIV}))
    assert [(path, message.split(";")[0]) for _, path, message in found] == [
        ("pdus[0]", "SNMPv3 needs a user name (snmp_username)"),
        ("pdus[0].driver", "unknown PDU driver 'apc_snmpp'"),
    ]
    for secret in ("snmp_community: 12345678", "snmp_auth_key: s3cr", "snmp_version: 4"):
        text = V2C.replace('snmp_version: "2c"', secret)
        if "community" in secret:
            text = text.replace("    snmp_community_env: PDU_COMMUNITY\n", "")
            text += "    snmp_community_env: X\n"  # both: refused
        found = problems(post(api, "plan", text))
        assert found, secret
        assert "12345678" not in str(found) and "s3cr" not in str(found)


def test_a_secret_given_twice_is_refused(api: Api) -> None:
    text = V2C.replace('snmp_version: "2c"', f"snmp_community: {COMMUNITY}")
    found = problems(with_env(api, "plan", text, {"PDU_COMMUNITY": COMMUNITY}))
    assert found == [(4, "pdus[0]", "give snmp_community or snmp_community_env, not both")]
    assert COMMUNITY not in str(found)


def test_env_names_reads_the_pdu_secret_references() -> None:
    text = "pdus:\n  - {name: p, snmp_community_env: COMM, snmp_priv_key_env: PRIV}\n"
    text += "machines:\n  - {name: m, bmc: {password_env: PW}}\n"
    assert env_names(text) == ["COMM", "PRIV", "PW"]
    assert env_names("pdus: [{name: p, snmp_community: COMM}]") == []
