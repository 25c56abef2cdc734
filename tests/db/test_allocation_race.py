"""50 concurrent allocators over 200 machines: no machine is ever handed out twice.

Each allocator is a thread with its own token and its own sessions, calling the
same service function the API calls. Runs on SQLite and on PostgreSQL. A control
runs the naive pattern (SELECT an available machine, then UPDATE it) under the
same checker, to show the checker catches double allocations.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import update
from sqlmodel import col, func, select

from provisiond.allocations import service as allocations
from provisiond.allocations.queue import run_queue
from provisiond.auth import create_token
from provisiond.container import Services
from provisiond.models import Allocation, ApiToken, Machine
from provisiond.schemas.allocations import AllocationIn
from tests.support.allocations import KEY, add_image, add_machines, fleet, machine_holders

ALLOCATORS = 50
MACHINES = 200
PER_ALLOCATOR = 5  # 250 requests for 200 machines: 50 must wait
TIMEOUT_S = 120


def _tokens(services: Services, count: int) -> list[ApiToken]:
    with services.db.transaction() as session:
        return [create_token(session, name=f"ci-{i}", role="ci")[0] for i in range(count)]


def test_concurrent_allocators_never_double_allocate(services: Services) -> None:
    db = services.db
    add_image(db)
    add_machines(db, fleet(MACHINES))
    tokens = _tokens(services, ALLOCATORS)
    spec = AllocationIn.model_validate({"image": "debian-12", "ssh_keys": [KEY]})
    start = threading.Barrier(ALLOCATORS, timeout=TIMEOUT_S)

    def allocator(token: ApiToken) -> list[str]:
        start.wait()
        made = []
        for _ in range(PER_ALLOCATOR):
            out, created = allocations.create(services, token, spec, actor=f"token:{token.name}")
            assert created
            made.append(out.id)
        return made

    with ThreadPoolExecutor(ALLOCATORS) as pool:
        futures = [pool.submit(allocator, token) for token in tokens]
        returned = [uuid for f in futures for uuid in f.result(timeout=TIMEOUT_S)]
    run_queue(services)  # whatever raced past an available machine gets it now

    holders = machine_holders(db)
    assert [ids for ids in holders.values() if len(ids) > 1] == []
    with db.read_session() as session:
        states = dict(
            session.execute(
                select(col(Allocation.state), func.count()).group_by(col(Allocation.state))
            ).all()
        )
        stored = set(session.exec(select(Allocation.uuid)).all())
        machine_states = dict(
            session.execute(
                select(col(Machine.state), func.count()).group_by(col(Machine.state))
            ).all()
        )
    assert len(returned) == len(set(returned)) == ALLOCATORS * PER_ALLOCATOR
    assert stored == set(returned)  # never lost
    assert states == {"deploying": MACHINES, "pending": ALLOCATORS * PER_ALLOCATOR - MACHINES}
    assert machine_states == {"deploying": MACHINES}
    assert len(holders) == MACHINES


def _naive_allocate(services: Services, allocation_id: int, barrier: threading.Barrier) -> None:
    with services.db.read_session() as session:
        machine_id = session.exec(
            select(Machine.id).where(Machine.state == "available").order_by(col(Machine.id))
        ).first()
    barrier.wait()  # every thread has read before any writes: the race window, made certain
    with services.db.transaction() as session:
        session.execute(
            update(Machine).where(col(Machine.id) == machine_id).values(state="allocated")
        )
        session.execute(
            update(Allocation)
            .where(col(Allocation.id) == allocation_id)
            .values(state="deploying", machine_id=machine_id)
        )


def test_control_naive_select_then_update_double_allocates(services: Services) -> None:
    """The checker above is not vacuous: SELECT-then-UPDATE hands one machine out many times."""
    db = services.db
    image = add_image(db)
    add_machines(db, fleet(20))
    (token,) = _tokens(services, 1)
    count = 10
    with db.transaction() as session:
        rows: list[Any] = [
            Allocation(owner_token_id=token.id or 0, image_id=image) for _ in range(count)
        ]
        session.add_all(rows)
        session.flush()
        ids = [row.id for row in rows]
    barrier = threading.Barrier(count, timeout=TIMEOUT_S)
    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(_naive_allocate, services, i, barrier) for i in ids]:
            future.result(timeout=TIMEOUT_S)
    doubles = [ids for ids in machine_holders(db).values() if len(ids) > 1]
    assert doubles, "the naive pattern should have handed a machine out twice"
    assert sum(len(ids) - 1 for ids in doubles) == count - 1
