from __future__ import annotations

import asyncio

from fastapi import APIRouter

from provisiond.api.deps import CI, Admin, ReadSession, ServicesDep
from provisiond.cluster import views
from provisiond.schemas.daemons import DaemonOut

router = APIRouter(prefix="/api/v1/daemons", tags=["daemons"])


@router.get("", response_model=list[DaemonOut])
def list_daemons(_: CI, session: ReadSession) -> list[DaemonOut]:
    """Every daemon on this database (stopped and dead ones for a day), its roles, and the
    machines it holds a lock on."""
    return views.list_daemons(session)


@router.post("/{daemon_id}/drain", response_model=DaemonOut)
async def drain(daemon_id: str, token: Admin, services: ServicesDep) -> DaemonOut:
    """Ask a daemon to hand its work to the others and stop (as SIGUSR2 does)."""
    return await asyncio.to_thread(views.drain, services.db, daemon_id, f"token:{token.name}")
