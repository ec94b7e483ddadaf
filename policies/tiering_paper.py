"""The paper's progressive KV-cache quantization: each block's precision from its importance, age
and the device's memory pressure (FP16 -> INT8 -> INT4 -> offloaded), with a reversible restore
of the most important blocks when the quality signal goes over budget (appendix A.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from policies.precision import Precision
from policies.tiering import BlockInfo, TieringDecision, TieringObservation
from policies.tiering_plan import (
    BlockKey,
    by_request,
    changes_to,
    count_of,
    device_tier,
    fp16_block_bytes,
    key,
    lowered,
    raise_to_fp16_bytes,
)


def block_importance(
    blocks: Sequence[BlockInfo], alpha: float, beta: float, gamma: float
) -> dict[BlockKey, float]:
    """The paper's Importance(k, v) = alpha x AttentionWeight + beta x AccessFrequency +
    gamma x SemanticRelevance (section 3.1), each term mapped to [0, 1] so that the importance is
    in [0, 1] when alpha + beta + gamma = 1:

    - attention: the block's share of the latest step's attention over the largest share among
      its request's blocks (0 when they are all 0), so every request's top block scores 1;
    - access frequency: reads per decode step of the block's age, min(access / max(age, 1), 1);
    - relevance: the cosine in [-1, 1] mapped linearly, (relevance + 1) / 2.
    """
    out: dict[BlockKey, float] = {}
    for req in by_request(blocks).values():
        top_share = max(b.attention_share for b in req)
        for b in req:
            attention = b.attention_share / top_share if top_share > 0 else 0.0
            frequency = min(max(b.access_count, 0) / max(b.age_steps, 1), 1.0)
            relevance = (min(max(b.relevance, -1.0), 1.0) + 1.0) / 2.0
            out[key(b)] = alpha * attention + beta * frequency + gamma * relevance
    return out


@dataclass(frozen=True, slots=True)
class ProgressiveTiering:
    """Progressive KV-cache quantization (the paper, section 3.1 and appendix A.1,
    ``dynamic_quantization_decision``).  With p = the device tier's pressure and i = a block's
    importance (``block_importance``), each block's level is, first rule that holds:

        p > offload_pressure and i < offload_importance  ->  3: OFFLOADED (EVICTED if ``evict``)
        p > int4_pressure and i < int4_importance        ->  2: INT4
        age > age_limit_steps or i < int8_importance     ->  1: INT8
        otherwise                                        ->  0: FP16

    Defaults are the paper's (0.8 / 0.3, 0.6 / 0.5, 0.7; the paper leaves ``threshold_age``
    open: 256 steps here).  A request's newest ``keep_recent_blocks`` blocks are still being
    written and read by every step: they are left as they are (FP16).

    The rules only lower a block (a demotion-only ratchet); raising is the job of the paper's
    reversible restore, which it drives by quality feedback: when ``quality_delta_ppl`` exceeds
    ``quality_budget_ppl``, the top ``restore_frac`` of all blocks by importance go back to FP16
    (from the FP16 copy ``keep_backup`` keeps in the host tier, else by recomputation).  The
    rules' levels only grow with p and the restore runs only while p <= ``offload_pressure``
    (restoring above the point where the rules offload would fight them), so more memory
    pressure never raises any block's precision.

    Feasibility without knowing block sizes: from the device tier's used bytes the policy
    estimates, erring high, what one FP16 block takes (``fp16_block_bytes``).  Restores stop
    before the estimated device pressure would pass ``offload_pressure``; offloads (which need an
    FP16 copy in the host tier, unless one is kept already) stop when the host tier's free bytes
    run out, and the remaining level-3 blocks (the least important) are evicted instead.  Both
    stop at the first block that does not fit, so the chosen sets only shrink as p grows.
    """

    kind: Literal["progressive"] = "progressive"
    observes_blocks: ClassVar[bool] = True
    alpha: float = 0.5  # weight of attention
    beta: float = 0.3  # weight of access frequency
    gamma: float = 0.2  # weight of semantic relevance
    offload_pressure: float = 0.8
    offload_importance: float = 0.3
    int4_pressure: float = 0.6
    int4_importance: float = 0.5
    int8_importance: float = 0.7
    age_limit_steps: int = 256
    keep_recent_blocks: int = 1
    evict: bool = False  # level 3 drops blocks instead of moving them to the host tier
    quality_budget_ppl: float = 0.5  # the paper's measured budget: 12.34 -> 12.89
    restore_frac: float = 0.1
    keep_backup: bool = True  # reversible quantization: keep an FP16 copy in the host tier

    def __post_init__(self) -> None:
        weights = (self.alpha, self.beta, self.gamma)
        if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-9:
            raise ValueError("progressive: alpha, beta, gamma must be >= 0 and sum to 1")
        fracs = (
            self.offload_pressure,
            self.offload_importance,
            self.int4_pressure,
            self.int4_importance,
            self.int8_importance,
            self.restore_frac,
        )
        if not all(0.0 <= f <= 1.0 for f in fracs):
            raise ValueError(
                "progressive: pressure, importance and restore_frac thresholds must be in [0, 1]"
            )
        if self.age_limit_steps < 0 or self.keep_recent_blocks < 0:
            raise ValueError("progressive: age_limit_steps and keep_recent_blocks must be >= 0")
        if self.quality_budget_ppl < 0:
            raise ValueError("progressive: quality_budget_ppl must be >= 0")

    def level(self, pressure: float, importance: float, age_steps: int) -> Precision:
        """The appendix A.1 rules for one block; level 3 is reported as OFFLOADED or EVICTED."""
        if pressure > self.offload_pressure and importance < self.offload_importance:
            return Precision.EVICTED if self.evict else Precision.OFFLOADED
        if pressure > self.int4_pressure and importance < self.int4_importance:
            return Precision.INT4
        if age_steps > self.age_limit_steps or importance < self.int8_importance:
            return Precision.INT8
        return Precision.FP16

    def decide(self, obs: TieringObservation) -> TieringDecision:
        pressure = obs.pressure("device")
        importance = block_importance(obs.blocks, self.alpha, self.beta, self.gamma)
        target = {
            key(b): lowered(b.precision, self.level(pressure, importance[key(b)], b.age_steps))
            for b in obs.blocks
            if b.position_from_end >= self.keep_recent_blocks
        }
        ranked = sorted(obs.blocks, key=lambda b: (-importance[key(b)], b.request_id, b.index))
        self._fit_offloads(obs, ranked, target)
        if obs.quality_delta_ppl > self.quality_budget_ppl and pressure <= self.offload_pressure:
            self._restore(obs, ranked, target)
        return TieringDecision(changes_to(obs.blocks, target), keep_backup=self.keep_backup)

    def _fit_offloads(
        self,
        obs: TieringObservation,
        ranked: Sequence[BlockInfo],
        target: dict[BlockKey, Precision],
    ) -> None:
        """New offloads, most important first, while the host tier has room for their FP16
        copies; from the first that does not fit on, evict instead.  A block whose FP16 copy is
        in the host tier already needs no room and is always offloaded."""
        host = next((p for p in obs.pressures if p.tier == "host"), None)
        if host is None:
            return
        free_bytes: float = host.capacity_bytes - host.used_bytes
        fp16_bytes = fp16_block_bytes(obs)
        for b in ranked:
            is_new_offload = (
                target.get(key(b)) == Precision.OFFLOADED and b.precision != Precision.OFFLOADED
            )
            if not is_new_offload or b.has_backup:
                continue
            free_bytes -= fp16_bytes
            if free_bytes < 0:
                target[key(b)] = Precision.EVICTED

    def _restore(
        self,
        obs: TieringObservation,
        ranked: Sequence[BlockInfo],
        target: dict[BlockKey, Precision],
    ) -> None:
        """The reversible restore: the most important blocks back to FP16, in order, until the
        estimated device pressure would pass ``offload_pressure``."""
        tier = device_tier(obs)
        fp16_bytes = fp16_block_bytes(obs)
        room_bytes = (
            self.offload_pressure * tier.capacity_bytes - tier.used_bytes
            if tier is not None
            else float("inf")
        )
        for b in ranked[: count_of(self.restore_frac, len(ranked))]:
            room_bytes -= raise_to_fp16_bytes(b.precision, fp16_bytes)
            if room_bytes < 0:
                return
            target[key(b)] = Precision.FP16
