"""Image metadata: kernel, initrd, rootfs, checksums. Files are stored by a later service."""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from provisiond.errors import Conflict
from provisiond.models import Allocation, Image
from provisiond.schemas import ImageIn, ImageOut, ImagePatch
from provisiond.services.crud import apply_patch, ensure_name_free, get_by_name
from provisiond.services.events import audit


def _find(session: Session, name: str) -> Image:
    return get_by_name(session, Image, name, kind="image")


def list_images(session: Session) -> list[ImageOut]:
    rows = session.exec(select(Image).order_by(Image.name))
    return [ImageOut.model_validate(row) for row in rows]


def get_image(session: Session, name: str) -> ImageOut:
    return ImageOut.model_validate(_find(session, name))


def create_image(session: Session, spec: ImageIn, *, actor: str, request_id: str = "") -> ImageOut:
    ensure_name_free(session, Image, spec.name, kind="image")
    image = Image(**spec.model_dump())
    session.add(image)
    session.flush()
    audit(
        session, "image_create", f"created image {image.name}", actor=actor, request_id=request_id
    )
    return ImageOut.model_validate(image)


def update_image(
    session: Session, name: str, patch: ImagePatch, *, actor: str, request_id: str = ""
) -> ImageOut:
    image = _find(session, name)
    if patch.name and patch.name != image.name:
        ensure_name_free(session, Image, patch.name, kind="image")
    changed = sorted(apply_patch(image, patch))
    session.add(image)
    session.flush()
    if changed:
        audit(
            session,
            "image_update",
            f"changed image {image.name}: {', '.join(changed)}",
            actor=actor,
            request_id=request_id,
            details={"fields": changed},
        )
    return ImageOut.model_validate(image)


def delete_image(session: Session, name: str, *, actor: str, request_id: str = "") -> None:
    image = _find(session, name)
    used, live = session.exec(
        select(func.count(), func.count(col(Allocation.machine_id))).where(
            Allocation.image_id == image.id
        )
    ).one()
    if used:
        raise Conflict(
            f"image {name} is referenced by {used} allocation(s), {live} of them holding a machine",
            hint="allocations keep their image for the record; PATCH this image or create a "
            "new one under another name instead",
        )
    audit(session, "image_delete", f"deleted image {name}", actor=actor, request_id=request_id)
    session.delete(image)
    session.flush()
