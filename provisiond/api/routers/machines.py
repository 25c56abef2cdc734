from __future__ import annotations

from fastapi import APIRouter, Request, status

from provisiond.api.deps import CI, Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.machines import service as machines
from provisiond.schemas.base import Key
from provisiond.schemas.resources import MachineEventIn, MachineIn, MachineOut, MachinePatch

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


@router.get("", response_model=list[MachineOut])
def list_machines(
    _: CI,
    session: ReadSession,
    state: Key | None = None,
    rack: Key | None = None,
    tag: Key | None = None,
    arch: Key | None = None,
) -> list[MachineOut]:
    return machines.list_machines(session, state=state, rack=rack, tag=tag, arch=arch)


@router.post("", response_model=MachineOut, status_code=status.HTTP_201_CREATED)
def create_machine(
    spec: MachineIn, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> MachineOut:
    return machines.create_machine(
        session,
        services.secrets,
        spec,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.get("/{ident}", response_model=MachineOut)
def get_machine(ident: Key, _: CI, session: ReadSession) -> MachineOut:
    return machines.get_machine(session, ident)


@router.patch("/{ident}", response_model=MachineOut)
def update_machine(
    ident: Key,
    patch: MachinePatch,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> MachineOut:
    return machines.update_machine(
        session,
        services.secrets,
        ident,
        patch,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.delete("/{ident}", status_code=status.HTTP_204_NO_CONTENT)
def delete_machine(
    ident: Key, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> None:
    machines.delete_machine(
        session,
        ident,
        actor=actor(request),
        hosts_changed=services.hosts_changed,
        request_id=rid(request),
    )


@router.post("/{ident}/events", response_model=MachineOut)
def fire_event(
    ident: Key,
    spec: MachineEventIn,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> MachineOut:
    return machines.fire_event(
        session,
        ident,
        spec,
        actor=actor(request),
        settings=services.settings,
        secrets=services.secrets,
        wake_deployer=services.wake_deployer,
        request_id=rid(request),
    )
