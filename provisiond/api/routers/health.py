"""Unauthenticated liveness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from provisiond import __version__
from provisiond.api.deps import ServicesDep
from provisiond.container import Services

router = APIRouter(tags=["health"])


#: A database probe slower than this makes /healthz answer "unhealthy" (never hang).
DB_PROBE_TIMEOUT_S = 2.0


def _probe_db(services: Services) -> None:
    with services.db.read_session() as session:
        session.execute(text("SELECT 1"))


@router.get("/healthz")
async def healthz(services: ServicesDep) -> JSONResponse:
    # Async, with the probe on the system lane's threads and connections (see
    # provisiond.lanes): a flood of API requests never delays it.
    try:
        await asyncio.wait_for(asyncio.to_thread(_probe_db, services), DB_PROBE_TIMEOUT_S)
        db = "ok"
    except TimeoutError:
        db = f"error: no answer in {DB_PROBE_TIMEOUT_S:g}s"
    except Exception as exc:  # any DB failure makes us unhealthy, with the reason
        db = f"error: {type(exc).__name__}"
    checks = {"db": db, **(services.netboot.health() if services.netboot else {})}
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unhealthy", "version": __version__, "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(services: ServicesDep) -> Response:
    for lane, n in services.db.connections_in_use().items():
        services.metrics.db_connections_in_use.labels(lane).set(n)
    return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)
