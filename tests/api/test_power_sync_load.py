"""Power sync loads only the BMCs it can read: at 10,000 machines applied without BMC
passwords, loading them all cost ~1 s of CPU and a 54 MB peak every minute."""

from __future__ import annotations

from typing import Any

from provisiond import lifecycle
from provisiond.container import Services
from provisiond.lifecycle import Ev
from provisiond.machines.power_sync import _load
from provisiond.models import Bmc, CredentialSet, Machine


def test_only_bmcs_with_an_address_and_a_password_are_loaded(services: Services) -> None:
    secret = services.secrets.encrypt("pw")
    with services.db.transaction() as session:
        cred = CredentialSet(name="lab", username="admin", secret_encrypted=secret)
        session.add(cred)
        session.flush()
        bmcs: dict[str, dict[str, Any]] = {
            "own-password": {"address": "127.0.0.1", "secret_encrypted": secret},
            "credential-set": {"address": "127.0.0.2", "credential_set_id": cred.id},
            "no-password": {"address": "127.0.0.3"},
            "empty-password": {"address": "127.0.0.4", "secret_encrypted": ""},
            "no-address": {"address": "", "secret_encrypted": secret},
            "manual": {"driver": "manual", "address": "127.0.0.5", "secret_encrypted": secret},
        }
        for name, fields in bmcs.items():
            machine = Machine(name=name)
            lifecycle.advance(session, machine, Ev.ENROLL, actor="test")
            assert machine.id is not None
            session.add(Bmc(machine_id=machine.id, username="admin", **fields))
    jobs, locked = _load(services)
    assert sorted(job.name for job in jobs) == ["credential-set", "own-password"]
    assert locked == 0
    by_name = {job.name: job for job in jobs}
    assert by_name["credential-set"].target.password == "pw"
