"""``recency``: keep the newest blocks of each request at FP16, older ones at INT8, and INT4 when
device memory pressure is high.

Standard library only, like every policy: ``decide`` is a pure function of the observation.  It
only ever lowers a block's precision (a block once demoted stays demoted, so there is nothing to
restore) and never touches a block that is no longer resident (offloaded or evicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from policies import Precision, TieringDecision, TieringObservation


@dataclass(frozen=True, slots=True)
class RecencyTiering:
    """Recency tiering.  With ``recent_blocks`` = 0 every resident block is demoted at the next
    tiering pass; with a large one nothing is.  Monotone in pressure: more pressure never leaves a
    block at a higher precision (``sim.testing.check_conformance`` checks it)."""

    kind: Literal["recency"] = "recency"
    family: ClassVar[str] = "tiering"
    observes_blocks: ClassVar[bool] = True  # it reads each block's position from the end
    recent_blocks: int = 4  # newest blocks of each request kept at FP16 (blocks, >= 0)
    int4_pressure: float = 0.7  # device KV used / capacity above which old blocks go to INT4

    def __post_init__(self) -> None:
        if self.recent_blocks < 0:
            raise ValueError(f"recent_blocks must be >= 0, got {self.recent_blocks}")

    def decide(self, obs: TieringObservation) -> TieringDecision:
        old = Precision.INT4 if obs.pressure("device") > self.int4_pressure else Precision.INT8
        changes = []
        for b in obs.blocks:
            if not b.precision.is_resident:
                continue  # never bring back an offloaded or evicted block
            want = Precision.FP16 if b.position_from_end < self.recent_blocks else old
            want = max(want, b.precision)  # a larger Precision is less precise: only ever lower
            if want != b.precision:
                changes.append((b.request_id, b.index, want))
        return TieringDecision(tuple(changes))
