from __future__ import annotations

from fastapi import APIRouter, Request, status

from provisiond.api.deps import Operator, ReadSession, ServicesDep, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.machines import credentials
from provisiond.schemas.base import Key
from provisiond.schemas.catalog import CredentialIn, CredentialOut, CredentialPatch

router = APIRouter(prefix="/api/v1/credentials", tags=["credentials"])


@router.get("", response_model=list[CredentialOut])
def list_credentials(_: Operator, session: ReadSession) -> list[CredentialOut]:
    return credentials.list_credentials(session)


@router.post("", response_model=CredentialOut, status_code=status.HTTP_201_CREATED)
def create_credential(
    spec: CredentialIn, request: Request, _: Operator, session: WriteSession, services: ServicesDep
) -> CredentialOut:
    return credentials.create_credential(
        session, services.secrets, spec, actor=actor(request), request_id=rid(request)
    )


@router.get("/{name}", response_model=CredentialOut)
def get_credential(name: Key, _: Operator, session: ReadSession) -> CredentialOut:
    return credentials.get_credential(session, name)


@router.patch("/{name}", response_model=CredentialOut)
def update_credential(
    name: Key,
    patch: CredentialPatch,
    request: Request,
    _: Operator,
    session: WriteSession,
    services: ServicesDep,
) -> CredentialOut:
    return credentials.update_credential(
        session, services.secrets, name, patch, actor=actor(request), request_id=rid(request)
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_credential(name: Key, request: Request, _: Operator, session: WriteSession) -> None:
    credentials.delete_credential(session, name, actor=actor(request), request_id=rid(request))
