"""The base of every validated configuration: a frozen pydantic model that rejects unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Validated once, never mutated; an unknown key is an error naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
