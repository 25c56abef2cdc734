"""Small helpers that the resource services share: look-up by name and patching."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from sqlmodel import Session, SQLModel, select

from provisiond.errors import Conflict, NotFound

T = TypeVar("T", bound=SQLModel)


def get_by_name(session: Session, model: type[T], name: str, *, kind: str, hint: str = "") -> T:
    row = session.exec(select(model).where(model.name == name)).first()  # type: ignore[attr-defined]
    if row is None:
        raise NotFound(f"no {kind} named {name!r}", hint=hint or f"list {kind}s to see the names")
    return row


def ensure_name_free(session: Session, model: type[T], name: str, *, kind: str) -> None:
    if session.exec(select(model).where(model.name == name)).first() is not None:  # type: ignore[attr-defined]
        raise Conflict(
            f"a {kind} named {name!r} exists",
            hint=f"pick another name, or PATCH the existing {kind}",
        )


def apply_patch(
    row: SQLModel, patch: BaseModel, *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Copy the fields set in ``patch`` onto ``row``; returns what changed."""
    changed: dict[str, Any] = {}
    for key, value in patch.model_dump(exclude_unset=True).items():
        if key in skip:
            continue
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed[key] = value
    return changed
