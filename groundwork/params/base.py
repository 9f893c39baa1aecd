"""What every section of params.yaml shares: the Section base and the bounded number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class Section(BaseModel):
    """Base for every section: immutable; unknown keys are errors, and every key is required.

    Values live in params.yaml alone (DVC tracks them there); these models hold only types and ranges.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
