"""The building blocks of the API schemas: constrained types and the Strict, Out and
Patch bases (unknown fields refused, NUL bytes refused, explicit nulls in patches)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from provisiond.validators import normalize_mac

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:=-]*$")
]
Arch = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[a-z0-9_]+$")]
#: A host name or IP address: no spaces, no scheme.
Address = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\s/]*$")]
Mac = Annotated[str, AfterValidator(normalize_mac)]
#: A file name inside the image store: relative, no ``..`` segment.


def _relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a relative path inside the image store, without '..'")
    return value


ImagePath = Annotated[
    str,
    StringConstraints(max_length=255, pattern=r"^[A-Za-z0-9._/+-]*$"),
    AfterValidator(_relative_path),
]
#: The largest value an INTEGER column holds on PostgreSQL.
INT_MAX = 2**31 - 1
Finite = Annotated[float, Field(allow_inf_nan=False)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(max_length=255)]
Short = Annotated[str, StringConstraints(max_length=128)]


#: A name or uuid in a URL, or a query filter: anything but NUL (PostgreSQL rejects it).
Key = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00]*$")]


def _has_nul(value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Patch(Strict):
    """A partial update: fields left out stay; ``null`` is allowed only where it means "none"."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_null(self) -> Patch:
        for key in sorted(self.model_fields_set - self.nullable):
            if getattr(self, key) is None:
                raise ValueError(f"{key} cannot be null; leave it out to keep it")
        return self


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)
    return values
