"""Routes the machine agent calls, authenticated by its per-machine agent token.

- ``POST /api/v1/agent/{machine_uuid}/inventory``: the hardware report;
- ``POST /api/v1/agent/{machine_uuid}/heartbeat``: "still alive", every ``interval_s``.

Both take ``Authorization: Bearer <agent token>`` (not an API token) and answer an
:class:`~provisiond.agent_schemas.AgentReply`. Bodies are capped at
:data:`MAX_BODY_BYTES` before FastAPI parses them, so a runaway or hostile client
gets a 413 instead of making the daemon buffer an unbounded body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from provisiond.agent_schemas import AgentReply, Heartbeat, InventoryReport
from provisiond.api.deps import ServicesDep, WriteSession
from provisiond.errors import ProvisiondError
from provisiond.models import Machine
from provisiond.services import agent_reports

MAX_BODY_BYTES = 256 * 1024


class BodyTooLarge(ProvisiondError):
    status_code = 413
    code = "payload_too_large"


def _too_large() -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than {MAX_BODY_BYTES} bytes",
        hint="an agent report is a few KiB; check what the client sends",
    )


class _CappedRequest(Request):
    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise _too_large()
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _too_large()
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


class CappedBodyRoute(APIRoute):
    """Reads the body under the cap first; FastAPI then parses the cached bytes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            request = _CappedRequest(request.scope, request.receive)
            await request.body()
            return await handler(request)

        return capped


router = APIRouter(prefix="/api/v1/agent", tags=["agent"], route_class=CappedBodyRoute)


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
