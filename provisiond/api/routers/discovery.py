"""POST /api/v1/discovery: an IPMI sweep; ``?stream=true`` streams progress as NDJSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from provisiond.api.deps import Operator, ServicesDep, actor
from provisiond.errors import ProvisiondError
from provisiond.logging import get_logger
from provisiond.machines import discovery

router = APIRouter(prefix="/api/v1/discovery", tags=["discovery"])
log = get_logger(__name__)


class DiscoveryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    networks: list[str] = Field(min_length=1, max_length=64, examples=[["10.1.0.0/22"]])
    ports: str = Field(default="623", max_length=256, examples=["623", "16000-16999"])
    credentials: list[str] | None = Field(default=None, max_length=32)


async def _stream(services: ServicesDep, plan: discovery.Sweep, who: str) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        discovery.discover(services, plan, actor=who, progress=queue.put_nowait)
    )
    try:
        while not (task.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield (json.dumps({"progress": getter.result()}) + "\n").encode()
            else:
                getter.cancel()
        try:
            final: dict[str, Any] = {"result": task.result().to_dict()}
        except ProvisiondError as exc:
            final = {"error": exc.to_dict()}
        except Exception:  # headers are sent: the error must travel in the stream
            log.exception("discovery_failed")
            final = {
                "error": {
                    "code": "internal",
                    "message": "the sweep failed unexpectedly",
                    "hint": "see the daemon's log",
                }
            }
        yield (json.dumps(final) + "\n").encode()
    finally:
        task.cancel()  # the client went away, or we are done: never leave the sweep running


@router.post("", response_model=None)
async def discover(
    spec: DiscoveryIn, request: Request, _: Operator, services: ServicesDep, stream: bool = False
) -> dict[str, Any] | StreamingResponse:
    plan = await asyncio.to_thread(
        discovery.prepare, services, spec.networks, spec.ports, spec.credentials
    )
    if stream:
        return StreamingResponse(
            _stream(services, plan, actor(request)), media_type="application/x-ndjson"
        )
    return (await discovery.discover(services, plan, actor=actor(request))).to_dict()
