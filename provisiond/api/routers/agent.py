"""Routes the machine agent calls, authenticated by its per-machine agent token.

- ``POST /api/v1/agent/{machine_uuid}/inventory``: the hardware report;
- ``POST /api/v1/agent/{machine_uuid}/heartbeat``: "still alive", every ``interval_s``.

Both take ``Authorization: Bearer <agent token>`` (not an API token) and answer an
:class:`~provisiond.schemas.agent.AgentReply`. Bodies are capped (256 KiB) by
:mod:`provisiond.api.admission` before FastAPI reads them, so a runaway or hostile
client gets a 413 instead of making the daemon buffer an unbounded body.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from provisiond.api.deps import ServicesDep, WriteSession
from provisiond.deploy import agent_reports
from provisiond.models import Machine
from provisiond.schemas.agent import AgentReply, Heartbeat, InventoryReport

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])


def _agent_machine(machine_uuid: str, request: Request, session: WriteSession) -> Machine:
    return agent_reports.authenticate_agent(
        session, machine_uuid, request.headers.get("authorization")
    )


AgentMachine = Annotated[Machine, Depends(_agent_machine)]


@router.post("/{machine_uuid}/inventory", response_model=AgentReply)
def inventory(
    report: InventoryReport, machine: AgentMachine, session: WriteSession, services: ServicesDep
) -> AgentReply:
    return agent_reports.record_inventory(
        session, machine, report, settings=services.settings, metrics=services.metrics
    )


@router.post("/{machine_uuid}/heartbeat", response_model=AgentReply)
def heartbeat(
    hb: Heartbeat, machine: AgentMachine, session: WriteSession, services: ServicesDep
) -> AgentReply:
    return agent_reports.record_heartbeat(
        session, machine, hb, settings=services.settings, metrics=services.metrics
    )
