"""The router list: one line per router."""

from fastapi import APIRouter

from provisiond.api.routers import health, racks

ROUTERS: list[APIRouter] = [
    health.router,
    racks.router,
]
