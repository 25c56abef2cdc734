from __future__ import annotations

from fastapi import APIRouter, Request, status

from provisiond.api.deps import CI, Operator, ReadSession, WriteSession, actor
from provisiond.api.deps import request_id as rid
from provisiond.inventory import images
from provisiond.schemas.base import Key
from provisiond.schemas.catalog import ImageIn, ImageOut, ImagePatch

router = APIRouter(prefix="/api/v1/images", tags=["images"])


@router.get("", response_model=list[ImageOut])
def list_images(_: CI, session: ReadSession) -> list[ImageOut]:
    return images.list_images(session)


@router.post("", response_model=ImageOut, status_code=status.HTTP_201_CREATED)
def create_image(spec: ImageIn, request: Request, _: Operator, session: WriteSession) -> ImageOut:
    return images.create_image(session, spec, actor=actor(request), request_id=rid(request))


@router.get("/{name}", response_model=ImageOut)
def get_image(name: Key, _: CI, session: ReadSession) -> ImageOut:
    return images.get_image(session, name)


@router.patch("/{name}", response_model=ImageOut)
def update_image(
    name: Key, patch: ImagePatch, request: Request, _: Operator, session: WriteSession
) -> ImageOut:
    return images.update_image(session, name, patch, actor=actor(request), request_id=rid(request))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(name: Key, request: Request, _: Operator, session: WriteSession) -> None:
    images.delete_image(session, name, actor=actor(request), request_id=rid(request))
