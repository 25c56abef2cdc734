"""Power and boot device of one machine, through its BMC."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from provisiond.api.deps import CI, Operator, ServicesDep, actor, request_id
from provisiond.drivers.power.base import BootDevice, PowerAction
from provisiond.services import machine_power

router = APIRouter(prefix="/api/v1/machines/{ident}", tags=["power"])


class PowerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: PowerAction


class BootDeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: BootDevice
    persistent: bool = False
    uefi: bool = False


@router.get("/power")
async def read_power(ident: str, _: CI, services: ServicesDep) -> dict[str, Any]:
    return (await machine_power.read_power(services, ident)).to_dict()


@router.post("/power")
async def power(
    ident: str, body: PowerIn, request: Request, _: Operator, services: ServicesDep
) -> dict[str, Any]:
    outcome = await machine_power.power_machine(
        services, ident, body.action, actor=actor(request), request_id=request_id(request)
    )
    return outcome.to_dict()


@router.post("/boot-device")
async def boot_device(
    ident: str, body: BootDeviceIn, request: Request, _: Operator, services: ServicesDep
) -> dict[str, Any]:
    return await machine_power.set_boot_device(
        services,
        ident,
        body.device,
        persistent=body.persistent,
        uefi=body.uefi,
        actor=actor(request),
        request_id=request_id(request),
    )
