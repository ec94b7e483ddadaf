"""A sweep axis given as a range (``{low, high, step | num, log}``): its grid, its length
computed without building it, and seeded random draws from it."""

from __future__ import annotations

import math
import random
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sim.config.frozen import Frozen
from sim.sweep.values import INT64

MAX_POINTS = 200_000  # grid points, samples and a range's num


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's true is not the number 1 here
        raise ValueError("expected a number, not a boolean")
    return value


Number = Annotated[int | float, BeforeValidator(_not_bool)]
Count = Annotated[int, BeforeValidator(_not_bool)]


class RangeAxis(Frozen):
    """Values from ``low`` to ``high`` (both included): every ``step``, or ``num`` evenly spaced
    (evenly in log with ``log``).  Integers when ``low``, ``high`` and ``step`` are."""

    low: Number
    high: Number
    step: Number | None = Field(default=None, gt=0)
    num: Count | None = Field(default=None, ge=1, le=MAX_POINTS)
    log: bool = False

    @field_validator("low", "high", "step")
    @classmethod
    def _finite(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("expected a finite number")
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            raise ValueError("an integer beyond the 64-bit range")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.high < self.low:
            raise ValueError("high must be >= low")
        if self.step is not None and self.num is not None:
            raise ValueError("give step or num, not both")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log needs low > 0 and num (not step)")
        if not math.isfinite(float(self.high) - float(self.low)):
            raise ValueError("high - low is beyond the floating-point range")
        if self.step is not None and not math.isfinite((self.high - self.low) / self.step):
            raise ValueError("step is too small for the range")
        return self

    @property
    def is_integer(self) -> bool:
        return all(isinstance(x, int) for x in (self.low, self.high, self.step or 1))

    @property
    def count(self) -> int | None:
        """How many values the range has (None: continuous), computed without making them."""
        if self.step is not None:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return self.num

    def at(self, i: int) -> int | float:
        """The range's ``i``-th value (0 <= i < count)."""
        if self.step is not None:
            return self._cast(self.low + i * self.step)
        if self.num == 1:
            return self._cast(self.low)
        f, g = (math.log, math.exp) if self.log else (float, float)
        lo, hi = f(self.low), f(self.high)
        return self._cast(g(lo + (hi - lo) * i / (self.num - 1)))

    def grid(self) -> list | None:
        """The values, or None for a continuous range (neither step nor num)."""
        n = self.count
        return None if n is None else [self.at(i) for i in range(n)]

    def sample(self, rng: random.Random):
        n = self.count
        if n is not None:  # the same draw as rng.choice(self.grid()), without the grid
            return self.at(rng.randrange(n))
        if self.log:
            return self._cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self._cast(rng.uniform(self.low, self.high))

    def _cast(self, x: float) -> int | float:
        # 12 significant digits: the same value (and point id) on every platform
        return int(round(x)) if self.is_integer else float(f"{x:.12g}")
