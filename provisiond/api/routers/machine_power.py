"""Power and boot device of one machine, through its BMC, and its BMC's TLS certificate.

BMC traffic is for operators: a ``ci`` token reading the power gets the recorded
state (``"source": "cached"``), never a call to the BMC. Powering on over the rack's
power budget is refused (409 ``rack_over_budget``) unless an admin sends ``force``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from provisiond.api.deps import CI, Operator, ServicesDep, actor, request_id
from provisiond.auth import Role
from provisiond.drivers.pdu.base import OutletAction
from provisiond.drivers.power.base import BootDevice, PowerAction
from provisiond.errors import Forbidden
from provisiond.machines import power as machine_power
from provisiond.pdus import outlets

router = APIRouter(prefix="/api/v1/machines/{ident}", tags=["power"])


class PowerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: PowerAction
    #: Power on even over the rack's power budget: admins only.
    force: bool = False


class BootDeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: BootDevice
    persistent: bool = False
    uefi: bool = False


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The fingerprint the operator confirmed; pinned only if the BMC still presents it.
    fingerprint: str = Field(max_length=128, examples=["sha256:AB:CD:...:EF"])


@router.get("/power")
async def read_power(ident: str, token: CI, services: ServicesDep) -> dict[str, Any]:
    live = Role[token.role] >= Role.operator
    return (await machine_power.read_power(services, ident, live=live)).to_dict()


@router.post("/power")
async def power(
    ident: str, body: PowerIn, request: Request, token: Operator, services: ServicesDep
) -> dict[str, Any]:
    if body.force and Role[token.role] < Role.admin:
        raise Forbidden(
            f"token {token.name!r} has role {token.role}; only an admin can force a power-on "
            "over the rack's power budget",
            hint="ask an admin, or power off something else in the rack first",
        )
    outcome = await machine_power.power_machine(
        services,
        ident,
        body.action,
        actor=actor(request),
        request_id=request_id(request),
        force=body.force,
    )
    return outcome.to_dict()


@router.post("/hard-off")
async def hard_off(
    ident: str, request: Request, _: Operator, services: ServicesDep
) -> dict[str, Any]:
    """Cut the PDU outlets feeding a machine whatever its BMC says (a hung BMC)."""
    results = await outlets.machine_power(
        services,
        ident,
        OutletAction.OFF,
        actor=actor(request),
        request_id=request_id(request),
        hard=True,
    )
    return {"machine": ident, "outlets": [r.to_dict() for r in results or []]}


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


@router.get("/bmc/certificate")
async def bmc_certificate(ident: str, _: Operator, services: ServicesDep) -> dict[str, Any]:
    """The TLS certificate the machine's Redfish BMC presents now; pins nothing."""
    return await machine_power.bmc_certificate(services, ident)


@router.put("/bmc/certificate")
async def pin_bmc_certificate(
    ident: str, body: PinIn, request: Request, _: Operator, services: ServicesDep
) -> dict[str, Any]:
    """Pin the fingerprint the operator confirmed, if the BMC still presents that certificate."""
    return await machine_power.pin_bmc_certificate(
        services, ident, body.fingerprint, actor=actor(request), request_id=request_id(request)
    )
