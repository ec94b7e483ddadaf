"""KV-cache block precisions, ordered from most to least precise."""

from __future__ import annotations

from enum import IntEnum


class Precision(IntEnum):
    """Storage state of one KV block.  A larger value is never more precise.

    ``OFFLOADED`` keeps the block (at full precision) in a slower tier; attention runs without it
    until it is restored by copy.  ``EVICTED`` drops it; restoring means recomputing it from the
    token ids.
    """

    FP16 = 0
    INT8 = 1
    INT4 = 2
    INT2 = 3
    OFFLOADED = 4
    EVICTED = 5

    @property
    def is_resident(self) -> bool:
        """True when the block lives in device memory and is read by attention."""
        return self <= Precision.INT2

    @property
    def is_quantized(self) -> bool:
        return Precision.INT8 <= self <= Precision.INT2
