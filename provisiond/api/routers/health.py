"""Unauthenticated liveness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from provisiond import __version__
from provisiond.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(services: ServicesDep) -> JSONResponse:
    try:
        with services.db.read_session() as session:
            session.execute(text("SELECT 1"))
        db = "ok"
    except Exception as exc:  # any DB failure makes us unhealthy, with the reason
        db = f"error: {type(exc).__name__}"
    checks = {"db": db, **(services.netboot.health() if services.netboot else {})}
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unhealthy", "version": __version__, "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(services: ServicesDep) -> Response:
    services.metrics.db_connections_in_use.set(services.db.connections_in_use())
    return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)
