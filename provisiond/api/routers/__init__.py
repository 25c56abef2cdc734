"""The router list: one line per router; and what a boot listener serves."""

from fastapi import APIRouter
from starlette.routing import BaseRoute

from provisiond.api.routers import (
    agent,
    allocations,
    boot,
    cabling,
    credentials,
    daemons,
    deployments,
    discovery,
    events,
    health,
    images,
    inventory,
    machine_power,
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
    machine_power.router,
    switches.router,
    pdus.router,
    images.router,
    events.router,
    tokens.router,
    credentials.router,
    inventory.router,
    discovery.router,
    boot.router,
    deployments.router,
    allocations.router,
    cabling.router,
    agent.router,
    daemons.router,
]

#: What a provisioning network's boot listener serves (provisiond.api.app.BootOnly):
#: the routes machines call while they boot, their agent's, and /healthz.
BOOT_ROUTES: list[BaseRoute] = [
    *boot.router.routes,
    *agent.router.routes,
    *(r for r in health.router.routes if getattr(r, "path", "") == "/healthz"),
]
