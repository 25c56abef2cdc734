"""Discovery's record step: one transaction, set queries, the same matches as row by row.

No BMCs here: the logins' results are built by hand, so the matching rules (address
and port, then serial, then BMC MAC) and the statement count can be checked exactly.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from provisiond.container import Services
from provisiond.drivers.power.base import Identity, PowerState
from provisiond.machines import discovery_record as discovery
from provisiond.models import Bmc, CredentialSet, Event, Machine
from tests.support.statements import counting


def _cred(services: Services) -> discovery.Cred:
    with services.db.transaction() as session:
        row = CredentialSet(
            name="sim", username="admin", secret_encrypted=services.secrets.encrypt("pw")
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        return discovery.Cred(row.id, row.name, row.username, "pw")


def _found(cred: discovery.Cred, i: int, *, port: int | None = None, **identity: str) -> Any:
    ident = Identity(
        vendor=identity.get("vendor", "Acme"),
        model="M1",
        serial=identity.get("serial", f"SN{i:05d}"),
        bmc_mac=identity.get("mac", f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"),
    )
    return discovery.Found("127.0.0.1", port or 20000 + i, cred, ident, PowerState.OFF)


def _record(services: Services, found: list[Any]) -> discovery.DiscoveryResult:
    result = discovery.DiscoveryResult()
    discovery.record(services, found, "test", result)
    return result


def test_enrolls_once_then_finds_every_machine_unchanged(services: Services) -> None:
    cred = _cred(services)
    found = [_found(cred, i) for i in range(30)]
    first = _record(services, found)
    assert sorted(first.enrolled) == sorted(f"bmc-127-0-0-1-{20000 + i}" for i in range(30))
    again = _record(services, found)
    assert again.enrolled == [] and again.updated == [] and len(again.unchanged) == 30
    with services.db.read_session() as session:
        machines = session.exec(select(Machine)).all()
        bmcs = {b.machine_id: b for b in session.exec(select(Bmc))}
        enrolls = session.exec(select(Event).where(Event.event == "enroll")).all()
    assert len(machines) == 30 and all(m.state == "enrolled" for m in machines)
    assert all(m.power_state == "off" and m.vendor == "Acme" for m in machines)
    assert {m.id for m in machines} == set(bmcs)
    for machine in machines:
        bmc = bmcs[machine.id or 0]
        assert (bmc.address, bmc.credential_set_id, bmc.username) == ("127.0.0.1", cred.id, "")
        assert machine.name == discovery.machine_name(bmc.address, bmc.port)
    assert len(enrolls) == 30 and {e.machine_id for e in enrolls} == set(bmcs)
    assert all(e.details["credentials"] == "sim" for e in enrolls)


def test_statements_do_not_grow_with_the_known_machines(services: Services) -> None:
    """Matching reads a few set queries for the whole sweep, not three per responder."""
    cred = _cred(services)
    _record(services, [_found(cred, i) for i in range(40)])
    counts = []
    for n in (10, 40):
        with counting(services.db) as seen:
            result = _record(services, [_found(cred, i) for i in range(n)])
        assert len(result.unchanged) == n
        counts.append(len(seen))
    assert counts[0] == counts[1] <= 8, counts
    # enrolling: one INSERT per machine (lifecycle.advance) plus a fixed few
    with counting(services.db) as seen:
        result = _record(services, [_found(cred, i) for i in range(100, 150)])
    assert len(result.enrolled) == 50
    assert seen.count("SELECT") <= 6 and len(seen) <= 50 + 10, seen


def test_matches_by_serial_then_bmc_mac_when_the_endpoint_moved(services: Services) -> None:
    cred = _cred(services)
    _record(services, [_found(cred, i) for i in range(3)])
    moved = [
        _found(cred, 0, port=30000),  # same serial, new port
        _found(cred, 1, port=30001, serial="", vendor="Other"),  # no serial: by BMC MAC
        _found(cred, 2),  # unchanged
    ]
    result = _record(services, moved)
    assert sorted(result.updated) == ["bmc-127-0-0-1-20000", "bmc-127-0-0-1-20001"]
    assert result.unchanged == ["bmc-127-0-0-1-20002"] and result.enrolled == []
    with services.db.read_session() as session:
        assert len(session.exec(select(Machine)).all()) == 3
        ports = sorted(b.port for b in session.exec(select(Bmc)))
        other = session.exec(select(Machine).where(Machine.name == "bmc-127-0-0-1-20001")).one()
        updates = session.exec(
            select(Event).where(Event.event == "updated").order_by(col(Event.id))
        ).all()
    assert ports == [20002, 30000, 30001] and other.vendor == "Other"
    assert [e.message for e in updates] == [
        "discovery updated bmc",
        "discovery updated bmc, vendor",
    ]


def test_one_machine_seen_at_two_endpoints_in_one_sweep_is_enrolled_once(
    services: Services,
) -> None:
    """The second responder matches the machine the first one enrolled (by serial), as a
    per-row query after the first one's flush did."""
    cred = _cred(services)
    twice = [_found(cred, 0), _found(cred, 0, port=20500, mac="02:00:00:00:99:99")]
    result = _record(services, twice)
    assert result.enrolled == ["bmc-127-0-0-1-20000"]
    assert result.updated == ["bmc-127-0-0-1-20000"]
    with services.db.read_session() as session:
        [bmc] = session.exec(select(Bmc)).all()
    assert (bmc.port, bmc.mac) == (20500, "02:00:00:00:99:99")
