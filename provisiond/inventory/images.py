"""Image catalog: metadata rows (kernel, initrd, rootfs or disk, checksums) and stored files.

The files live in :class:`provisiond.netboot.images.ImageStore`; :func:`add_image`
stores them first and then records the row with their sha256, so a catalog row
never names a file that was not fully copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlmodel import Session, col, func, select

from provisiond.crud import apply_patch, ensure_name_free, get_by_name
from provisiond.errors import Conflict, Problem, ValidationFailed
from provisiond.events import audit
from provisiond.models import Allocation, Deployment, Image
from provisiond.netboot.images import ImageStore
from provisiond.schemas.catalog import DiskImageIn, ImageIn, ImageOut, ImagePatch

SpecT = TypeVar("SpecT", ImageIn, DiskImageIn)


def _find(session: Session, name: str) -> Image:
    return get_by_name(session, Image, name, kind="image")


def list_images(session: Session) -> list[ImageOut]:
    rows = session.exec(select(Image).order_by(Image.name))
    return [ImageOut.model_validate(row) for row in rows]


def get_image(session: Session, name: str) -> ImageOut:
    return ImageOut.model_validate(_find(session, name))


def create_image(
    session: Session, spec: ImageIn | DiskImageIn, *, actor: str, request_id: str = ""
) -> ImageOut:
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
    outcomes = session.exec(select(Deployment.outcome).where(Deployment.image_id == image.id)).all()
    deploys, running = len(outcomes), sum(1 for o in outcomes if o == "")
    if deploys:
        raise Conflict(
            f"image {name} was used by {deploys} deploy(s), {running} of them running",
            hint="deploy records keep their image for the record; PATCH this image or create "
            "a new one under another name instead",
        )
    audit(session, "image_delete", f"deleted image {name}", actor=actor, request_id=request_id)
    session.delete(image)
    session.flush()


def add_image(
    session: Session,
    store: ImageStore,
    *,
    name: str,
    files: dict[str, Path],
    arch: str = "x86_64",
    kind: str = "live",
    kernel_args: str = "",
    os_template: str = "",
    actor: str,
) -> ImageOut:
    """Copy ``files`` (kernel, initrd, optional rootfs) into the store and record the image.

    The row is validated (ImageIn) before any byte is copied. If recording fails after
    the copy, the stored folder is removed again.
    """
    ensure_name_free(session, Image, name, kind="image")
    paths = {role: f"{name}/{path.name}" for role, path in files.items()}
    _validated(
        {
            "name": name,
            "arch": arch,
            "kind": kind,
            "kernel_args": kernel_args,
            "os_template": os_template,
            **paths,
        }
    )
    stored = store.add(name, files)
    try:
        spec = _validated(
            {
                "name": name,
                "arch": arch,
                "kind": kind,
                "kernel_args": kernel_args,
                "os_template": os_template,
                **{f.role: f.path for f in stored},
                "sha256": {f.role: f.sha256 for f in stored},
            }
        )
        return create_image(session, spec, actor=actor)
    except BaseException:
        store.remove(name)
        raise


def _validated(data: dict[str, Any]) -> ImageIn:
    return validated_as(ImageIn, data)


def validated_as(model: type[SpecT], data: dict[str, Any]) -> SpecT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(
            [Problem(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()],
            hint="fix the option named above",
        ) from None


@dataclass(frozen=True)
class VerifyResult:
    name: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_images(
    session: Session, store: ImageStore, name: str | None = None
) -> list[VerifyResult]:
    rows = (
        [_find(session, name)] if name else list(session.exec(select(Image).order_by(Image.name)))
    )
    results = []
    for row in rows:
        paths = {"kernel": row.kernel, "initrd": row.initrd, "rootfs": row.rootfs, "disk": row.disk}
        results.append(VerifyResult(row.name, store.verify(paths, dict(row.sha256))))
    return results
