"""A machine's deploys and inspections, newest first, with per-phase timings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from provisiond.api.deps import CI, ReadSession
from provisiond.deploy import deployments
from provisiond.schemas.base import Key

router = APIRouter(prefix="/api/v1/machines/{ident}", tags=["deployments"])


@router.get("/deployments")
def list_deployments(
    ident: Key, _: CI, session: ReadSession, limit: int = Query(10, ge=1, le=100)
) -> list[dict[str, Any]]:
    return deployments.list_for_machine(session, ident, limit=limit)
