"""The router list: one line per router."""

from fastapi import APIRouter

from provisiond.api.routers import (
    credentials,
    discovery,
    events,
    health,
    images,
    inventory,
    machines,
    pdus,
    racks,
    switches,
    tokens,
)

ROUTERS: list[APIRouter] = [
    health.router,
    racks.router,
    machines.router,
    switches.router,
    pdus.router,
    images.router,
    events.router,
    tokens.router,
    credentials.router,
    inventory.router,
    discovery.router,
]
