"""The router list: one line per router."""

from fastapi import APIRouter

from provisiond.api.routers import (
    agent,
    allocations,
    boot,
    credentials,
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
    agent.router,
]
