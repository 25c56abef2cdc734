from __future__ import annotations

from fastapi import APIRouter, Request, status

import provisiond.tokens as tokens
from provisiond.api.deps import Admin, ReadSession, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.schemas.base import Key
from provisiond.schemas.catalog import TokenCreated, TokenIn, TokenOut

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.get("", response_model=list[TokenOut])
def list_tokens(_: Admin, session: ReadSession) -> list[TokenOut]:
    return tokens.list_tokens(session)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(spec: TokenIn, request: Request, _: Admin, session: WriteSession) -> TokenCreated:
    """The response carries the clear token; it is the only time it is shown."""
    return tokens.create_token(session, spec, actor=actor(request), request_id=rid(request))


@router.get("/{name}", response_model=TokenOut)
def get_token(name: Key, _: Admin, session: ReadSession) -> TokenOut:
    return tokens.get_token(session, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_token(name: Key, request: Request, _: Admin, session: WriteSession) -> None:
    tokens.delete_token(session, name, actor=actor(request), request_id=rid(request))
