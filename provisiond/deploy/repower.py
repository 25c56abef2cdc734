"""The repower step: a boot lost across a daemon restart, tried again from the power-cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisiond.deploy import records as deploy
from provisiond.deploy.release import ACTOR
from provisiond.lifecycle import State
from provisiond.models import Machine, utcnow

if TYPE_CHECKING:
    from provisiond.deploy.engine import DeployEngine


def repower(engine: DeployEngine, machine_id: int) -> None:
    """Retry from the power-cycle a boot lost across a restart (:mod:`.lost_boot`), or
    fail it after ``deploy_max_attempts``; fenced on the step's lock."""
    limit = engine.settings.deploy_max_attempts
    reason = (
        "a boot power-cycled before a daemon restart was not heard from in the "
        f"{engine.settings.lost_boot_s:.0f}s after it; its callback may have gone unanswered"
    )
    with engine.services.db.transaction() as session:
        if not engine.guard.hold(session, machine_id, "retry from the power-cycle"):
            return
        machine = session.get(Machine, machine_id)
        if machine is None or machine.state not in (State.DEPLOYING, State.INSPECTING):
            return
        record = deploy.running_deployment(session, machine_id)
        if record is None or not engine._lost(machine, record, utcnow()):
            return
        if record.attempt >= limit:
            deploy.fail(
                session,
                machine,
                reason=f"{reason}; gave up after {record.attempt} attempts",
                actor=ACTOR,
                settings=engine.settings,
            )
            return
        deploy.retry_from_power_cycle(
            session, machine, record, secrets=engine.services.secrets, reason=reason
        )
