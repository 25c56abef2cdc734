"""Test setup for allocations: images, available machines, and the engine's moves.

The deploy engine is not running in API and DB tests; these helpers stand in for
what it would do by firing the same lifecycle events it fires (``booted``,
``ready``, ``fail``, ``done``), through :func:`provisiond.lifecycle.advance`.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from provisiond import lifecycle
from provisiond.db import Database
from provisiond.lifecycle import Ev
from provisiond.models import Allocation, ApiToken, Image, Machine, Nic, Rack

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ci@runner"


def add_image(db: Database, name: str = "debian-12", arch: str = "x86_64") -> int:
    with db.transaction() as session:
        image = Image(name=name, arch=arch, kernel="vmlinuz", initrd="initrd.img")
        session.add(image)
        session.flush()
        assert image.id is not None
        return image.id


def add_rack(db: Database, name: str, site: str = "") -> int:
    with db.transaction() as session:
        rack = Rack(name=name, site=site)
        session.add(rack)
        session.flush()
        assert rack.id is not None
        return rack.id


def add_machines(db: Database, specs: list[dict[str, Any]], state: str = "available") -> list[int]:
    """Machines walked through the lifecycle to ``state`` (available or enrolled/retired)."""
    path = {
        "available": [Ev.ENROLL, Ev.INSPECT, Ev.DONE],
        "enrolled": [Ev.ENROLL],
        "retired": [Ev.ENROLL, Ev.RETIRE],
    }[state]
    ids = []
    with db.transaction() as session:
        for spec in specs:
            spec = {"arch": "x86_64", "cpus": 4, "ram_mib": 8192, **spec}
            ip = spec.pop("ip", "")
            machine = Machine(**spec)
            for ev in path:
                lifecycle.advance(session, machine, ev, actor="test")
            assert machine.id is not None
            if ip:
                session.add(Nic(machine_id=machine.id, mac=_mac(machine.id), ip_address=ip))
            ids.append(machine.id)
    return ids


def _mac(n: int) -> str:
    return "52:54:00:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (16, 8, 0))


def fleet(count: int, prefix: str = "m", **extra: Any) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i:04d}", **extra} for i in range(count)]


def fire(db: Database, name: str, *events: Ev, reason: str = "") -> str:
    """Fire lifecycle events on a machine as the engine would; returns its new state."""
    with db.transaction() as session:
        machine = session.exec(select(Machine).where(Machine.name == name)).one()
        for ev in events:
            lifecycle.advance(session, machine, ev, actor="engine", reason=reason)
        return machine.state


def machine_state(db: Database, name: str) -> str:
    with db.read_session() as session:
        return session.exec(select(Machine.state).where(Machine.name == name)).one()


def token_id(db: Database, name: str) -> int:
    with db.read_session() as session:
        row = session.exec(select(ApiToken.id).where(ApiToken.name == name)).one()
        assert row is not None
        return row


def machine_holders(db: Database) -> dict[int, list[str]]:
    """machine id -> uuids of the live allocations holding it (more than one is a bug)."""
    holders: dict[int, list[str]] = {}
    with db.read_session() as session:
        for uuid, machine_id in session.exec(
            select(Allocation.uuid, Allocation.machine_id).where(
                col(Allocation.state).in_(("deploying", "ready")),
            )
        ).all():
            if machine_id is not None:
                holders.setdefault(machine_id, []).append(uuid)
    return holders
