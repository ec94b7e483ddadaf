"""An example user policy: keep the newest blocks at FP16, older ones at INT8, and INT4 under
memory pressure.  Standard library only, like every policy; test it with ``sim.testing``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from policies import Precision, TieringDecision, TieringObservation


@dataclass(frozen=True, slots=True)
class RecencyTiering:
    kind: Literal["recency"] = "recency"
    observes_blocks: ClassVar[bool] = True
    recent_blocks: int = 4  # newest blocks of each request kept at FP16
    int4_pressure: float = 0.7  # above this device pressure, old blocks go to INT4

    def decide(self, obs: TieringObservation) -> TieringDecision:
        old = Precision.INT4 if obs.pressure("device") > self.int4_pressure else Precision.INT8
        changes = []
        for b in obs.blocks:
            if not b.precision.is_resident:
                continue  # never bring back an offloaded or evicted block
            want = Precision.FP16 if b.position_from_end < self.recent_blocks else old
            want = max(want, b.precision)  # only ever lower a block's precision
            if want != b.precision:
                changes.append((b.request_id, b.index, want))
        return TieringDecision(tuple(changes))


@dataclass(frozen=True, slots=True)
class BrokenTiering:
    """A planted bug: restores blocks to FP16 when pressure is HIGH (the comparison is flipped).
    ``sim.testing.check_conformance`` must catch it."""

    kind: Literal["broken"] = "broken"
    observes_blocks: ClassVar[bool] = True

    def decide(self, obs: TieringObservation) -> TieringDecision:
        target = Precision.FP16 if obs.pressure("device") > 0.5 else Precision.INT4
        return TieringDecision(tuple((b.request_id, b.index, target) for b in obs.blocks
                                     if b.precision.is_resident and b.precision != target))
