"""Request and response shapes shared by the API, its client and the services.

Table models (provisiond.models) stay apart from what the API accepts and shows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- racks -------------------------------------------------------------------


class RackIn(Strict):
    name: Name
    site: str = Field(default="", max_length=64)
    u_height: int = Field(default=42, ge=1, le=60)
    power_budget_watts: int | None = Field(default=None, ge=0)


class RackPatch(Strict):
    name: Name | None = None
    site: str | None = Field(default=None, max_length=64)
    u_height: int | None = Field(default=None, ge=1, le=60)
    power_budget_watts: int | None = Field(default=None, ge=0)


class RackOut(Out):
    name: str
    site: str
    u_height: int
    power_budget_watts: int | None
    created_at: datetime
