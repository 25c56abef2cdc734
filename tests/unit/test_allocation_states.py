"""The allocation state table, advance() on a real database, and the one-writer rule."""

from __future__ import annotations

import ast
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

import provisiond
from provisiond.allocations import states
from provisiond.allocations.states import (
    FINAL_STATES,
    LIVE_STATES,
    TRANSITIONS,
    AllocationState,
    AllocEv,
    advance,
)
from provisiond.auth import create_token
from provisiond.db import Database
from provisiond.errors import Conflict, InvalidTransition
from provisiond.models import Allocation, utcnow
from tests.support.allocations import add_machines, fleet

# The life of an allocation as the service docstring draws it, written out apart from the code.
DRAWN = {
    ("pending", "claim"): "deploying",
    ("deploying", "ready"): "ready",
    ("deploying", "retry"): "pending",
    ("deploying", "fail"): "failed",
    ("ready", "fail"): "failed",
    **{(live, "release"): "released" for live in ("pending", "deploying", "ready")},
    **{(live, "expire"): "expired" for live in ("pending", "deploying", "ready")},
}


def test_the_table_is_the_drawn_one_and_stores_the_old_strings() -> None:
    assert {(s.value, e.value): d.value for (s, e), d in TRANSITIONS.items()} == DRAWN
    assert [s.value for s in AllocationState] == [
        "pending",
        "deploying",
        "ready",
        "failed",
        "released",
        "expired",
    ]
    assert not any(src in FINAL_STATES for src, _ in TRANSITIONS)
    assert set(LIVE_STATES) | set(FINAL_STATES) == set(AllocationState)


def _allocation(session: Session, state: AllocationState, lease_s: int = 600) -> Allocation:
    token, _ = create_token(session, name=f"t-{utcnow().timestamp()}-{state}", role="ci")
    assert token.id is not None
    allocation = Allocation(owner_token_id=token.id, state=state.value, lease_s=lease_s)
    session.add(allocation)
    session.flush()
    return allocation


@pytest.mark.parametrize(("src", "event"), sorted(TRANSITIONS))
def test_every_transition_in_the_table(db: Database, src: AllocationState, event: AllocEv) -> None:
    (machine_id,) = add_machines(db, fleet(1))
    now = utcnow()
    with db.transaction() as session:
        allocation = _allocation(session, src)
        allocation.machine_id = None if src is AllocationState.PENDING else machine_id
        before = allocation.attempts
        dst = advance(session, allocation, event, machine_id=machine_id, reason="why", now=now)
        allocation_id = allocation.id
    assert dst is TRANSITIONS[(src, event)]
    with db.read_session() as session:
        stored = session.get(Allocation, allocation_id)
        assert stored is not None
        assert stored.state == dst.value
        assert stored.updated_at == now
        assert (stored.released_at == now) is (dst in FINAL_STATES)
        if event is AllocEv.CLAIM:
            assert (stored.machine_id, stored.attempts) == (machine_id, before + 1)
        if event is AllocEv.RETRY:
            assert stored.machine_id is None
        if event is AllocEv.READY:
            assert stored.expires_at == now + timedelta(seconds=600)
        if event is AllocEv.FAIL:
            assert stored.failure_reason == "why"


ILLEGAL = [
    (src, ev)
    for src, ev in itertools.product(AllocationState, AllocEv)
    if (src, ev) not in TRANSITIONS
]


@pytest.mark.parametrize(("src", "event"), ILLEGAL)
def test_an_illegal_transition_raises_and_changes_nothing(
    sqlite_db: Database, src: AllocationState, event: AllocEv
) -> None:
    with sqlite_db.transaction() as session:
        allocation = _allocation(session, src)
        with pytest.raises(InvalidTransition) as raised:
            advance(session, allocation, event, machine_id=1)
        assert allocation.state == src.value
        assert allocation.released_at is None
    assert isinstance(raised.value, Conflict)
    assert raised.value.status_code == 409
    assert f"cannot {event.value} an allocation that is {src.value}" in raised.value.message
    assert raised.value.hint


def test_a_claim_must_name_its_machine(sqlite_db: Database) -> None:
    with sqlite_db.transaction() as session:
        allocation = _allocation(session, AllocationState.PENDING)
        with pytest.raises(ValueError, match="names the machine"):
            advance(session, allocation, AllocEv.CLAIM)


# --- one writer: nothing but states.advance assigns an allocation's state ----------------

ROOT = Path(provisiond.__file__).parent
STATE_STRINGS = {s.value for s in AllocationState}


def _state_writes(source: str) -> list[int]:
    """Lines that assign ``<something alloc...>.state``, or any ``.state`` a state string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets, value = [node.target], node.value
        for target in targets:
            if not (isinstance(target, ast.Attribute) and target.attr == "state"):
                continue
            owner = ast.unparse(target.value).lower()
            literal = isinstance(value, ast.Constant) and value.value in STATE_STRINGS
            enum = (
                isinstance(value, ast.Attribute) and "allocationstate" in ast.unparse(value).lower()
            )
            if "alloc" in owner or literal or enum:
                found.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("setattr")
            and len(node.args) > 1
            and ast.unparse(node.args[1]) in ("'state'", '"state"')
        ):
            found.append(node.lineno)
    return found


def test_the_checker_sees_direct_state_writes() -> None:
    # The three shapes the code had before states.advance existed, and two disguises.
    before = (
        'allocation.state = "deploying"\n'
        "allocation.state = state\n"
        'row.state = "pending"\n'
        "a.state = AllocationState.READY\n"
        'setattr(allocation, "state", "expired")\n'
        "machine.state = dst\n"  # a machine's, through lifecycle.advance: allowed
    )
    assert _state_writes(before) == [1, 2, 3, 4, 5]


def test_only_states_advance_writes_allocation_state() -> None:
    writes = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path == Path(states.__file__):
            continue
        writes += [f"{rel}:{line}" for line in _state_writes(path.read_text())]
    assert writes == [], "use provisiond.allocations.states.advance:\n" + "\n".join(writes)
