"""The deploy engine's power-on respects the rack power budget (both databases): a deploy
whose power-on would pass the budget fails with the reason, and its BMC (a simulated one,
real UDP) is never told to power on; within budget the same step powers the machine on."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator

import pytest
from sqlmodel import col, select

from provisiond.container import Services
from provisiond.deploy import records as deploy
from provisiond.deploy.engine import DeployEngine
from provisiond.deploy.steps import Work
from provisiond.lifecycle import Ev, advance
from provisiond.models import Bmc, Event, Machine, Rack, utcnow
from provisiond.rack import BmcFarm

_addresses = itertools.count(random.randrange(0, 40_000))


@pytest.fixture
def farm() -> Iterator[BmcFarm]:
    n = next(_addresses)
    with BmcFarm(1, address=f"127.{210 + n // 62_500 % 20}.{n // 250 % 250}.{n % 250 + 2}") as f:
        yield f


def _deploying(services: Services, farm: BmcFarm, budget: int) -> int:
    address, port = farm.endpoint(0)
    with services.db.transaction() as s:
        rack = Rack(name="r1", power_budget_watts=budget)
        s.add(rack)
        s.flush()
        other = Machine(name="busy", rack_id=rack.id, measured_watts=900, measured_source="bmc",
                        measured_at=utcnow(), power_state="on")  # fmt: skip
        advance(s, other, Ev.ENROLL, actor="test")
        m = Machine(name="m1", rack_id=rack.id, power_watts=400, power_state="off")
        advance(s, m, Ev.ENROLL, actor="test")
        for ev in (Ev.INSPECT, Ev.DONE, Ev.ALLOCATE):
            advance(s, m, ev, actor="test")
        assert m.id is not None
        s.add(
            Bmc(
                machine_id=m.id,
                address=address,
                port=port,
                username="admin",
                secret_encrypted=services.secrets.encrypt("password"),
            )
        )
        deploy.start_deploy(
            s,
            m,
            allocation=None,
            image_id=None,
            actor="test",
            settings=services.settings,
            secrets=services.secrets,
        )
        return m.id


def _power_step(services: Services, machine_id: int) -> None:
    engine = DeployEngine(services)
    asyncio.run(engine._drive(Work(machine_id, "m1", "power")))


def test_a_deploy_whose_power_on_passes_the_budget_fails_with_the_reason(
    services: Services, farm: BmcFarm
) -> None:
    machine_id = _deploying(services, farm, budget=1000)  # 900 W drawn + 400 W declared
    _power_step(services, machine_id)
    with services.db.read_session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None and machine.last_error is not None
        reason = str(machine.last_error["reason"])
        refused = s.exec(
            select(Event).where(col(Event.event) == "power_on_refused_over_budget")
        ).all()
    # Worded by what failed: the budget, not the BMC.
    assert reason.startswith("power-on refused: rack r1 would draw 1300 W of its 1000 W budget")
    assert "BMC" not in reason
    assert farm.state(0).power == "off"
    assert [e.machine_name for e in refused] == ["m1"]


def test_within_budget_the_deploy_powers_on(services: Services, farm: BmcFarm) -> None:
    machine_id = _deploying(services, farm, budget=2000)
    _power_step(services, machine_id)
    assert farm.state(0).power == "on"
    with services.db.read_session() as s:
        rack = s.exec(select(Rack)).one()
    assert rack.measured_watts == 1300  # 900 W + the 400 W reserved for m1 until the next sync


def test_a_machine_the_engine_reads_on_is_cycled_whatever_the_budget(
    services: Services, farm: BmcFarm
) -> None:
    """The DB says off (the last sync is old), the BMC says on: a cycle draws nothing more."""
    machine_id = _deploying(services, farm, budget=1000)  # would be 1300 W if it were off
    farm.set_power(0, True)
    boots = len(farm.state(0).boots)
    _power_step(services, machine_id)
    with services.db.read_session() as s:
        machine = s.get(Machine, machine_id)
        refused = s.exec(
            select(Event).where(col(Event.event) == "power_on_refused_over_budget")
        ).all()
    assert machine is not None and machine.last_error is None
    assert refused == [] and farm.state(0).power == "on"
    assert len(farm.state(0).boots) == boots + 1  # cycled, from the network
