"""Tiering baselines from the literature: a full-precision recent window over a low-bit history
(KIVI), attention sinks plus a window (StreamingLLM), heavy hitters plus a window (H2O), and heavy
hitters at full precision over a low-bit rest (MiKV).

Contract shared by all four: they only ever lower a block's precision.  None of these methods keeps
a full-precision copy to go back to, so a block they demoted or evicted stays so (an evicted block
is never brought back); ``keep_backup`` is False.  New blocks are written at FP16: each method
keeps the newest tokens at full precision and demotes them only as they age out of the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from policies.precision import Precision
from policies.tiering import BlockInfo, TieringDecision, TieringObservation
from policies.tiering_plan import (
    BlockKey,
    blocks_for_tokens,
    by_request,
    changes_to,
    count_of,
    key,
    lowered,
)

_LOW_BITS = ("int4", "int2")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _demote_all(blocks: Sequence[BlockInfo], keep: set[BlockKey], to: Precision) -> TieringDecision:
    """Every block not in ``keep`` goes down to ``to`` (or stays where it is if lower)."""
    target = {key(b): lowered(b.precision, to) for b in blocks if key(b) not in keep}
    return TieringDecision(changes_to(blocks, target))


def heavy_and_recent(
    blocks: Sequence[BlockInfo], heavy_frac: float, recent_blocks: int
) -> set[BlockKey]:
    """Per request: its newest ``recent_blocks`` blocks plus its heavy hitters, the
    ceil(heavy_frac x its number of blocks) blocks outside that window with the most accumulated
    attention mass (H2O, Zhang et al. 2023, Alg. 1).  Evicted blocks are not candidates (their
    mass stopped growing and nothing brings them back); ties go to the older block."""
    keep: set[BlockKey] = set()
    for req in by_request(blocks).values():
        recent = [b for b in req if b.position_from_end < recent_blocks]
        candidates = [
            b
            for b in req
            if b.position_from_end >= recent_blocks and b.precision != Precision.EVICTED
        ]
        candidates.sort(key=lambda b: (-b.attention_mass, b.index))
        heavy = candidates[: count_of(heavy_frac, len(req))]
        keep.update(key(b) for b in recent + heavy)
    return keep


@dataclass(frozen=True, slots=True)
class KiviTiering:
    """KIVI (Liu et al. 2024, "KIVI: a tuning-free asymmetric 2bit quantization for KV cache"):
    the newest ``residual_tokens`` tokens of each request stay at FP16 (the residual), everything
    older is quantized to ``bits``.  KIVI quantizes keys per channel and values per token in
    groups; at block granularity that is one precision per block.  The residual in blocks is
    ceil(residual_tokens / block_tokens), counted from each request's newest block."""

    kind: Literal["kivi"] = "kivi"
    observes_blocks: ClassVar[bool] = True
    residual_tokens: int = 128
    bits: Literal["int4", "int2"] = "int2"

    def __post_init__(self) -> None:
        _check(self.residual_tokens >= 0, "kivi: residual_tokens must be >= 0")
        _check(self.bits in _LOW_BITS, f"kivi: bits must be one of {_LOW_BITS}")

    def decide(self, obs: TieringObservation) -> TieringDecision:
        window = blocks_for_tokens(self.residual_tokens, obs.block_tokens)
        keep = {key(b) for b in obs.blocks if b.position_from_end < window}
        return _demote_all(obs.blocks, keep, Precision[self.bits.upper()])


@dataclass(frozen=True, slots=True)
class StreamingTiering:
    """StreamingLLM (Xiao et al. 2023, "Efficient streaming language models with attention
    sinks"): keep the blocks holding the first ``sink_tokens`` tokens (the attention sinks: block
    i holds tokens [i x block_tokens, (i + 1) x block_tokens)) and a window of the newest
    ``window_tokens`` tokens; evict the rest.  Kept blocks keep their precision."""

    kind: Literal["streaming"] = "streaming"
    observes_blocks: ClassVar[bool] = True
    sink_tokens: int = 4
    window_tokens: int = 1024

    def __post_init__(self) -> None:
        _check(self.sink_tokens >= 0, "streaming: sink_tokens must be >= 0")
        _check(self.window_tokens >= 0, "streaming: window_tokens must be >= 0")

    def decide(self, obs: TieringObservation) -> TieringDecision:
        window = blocks_for_tokens(self.window_tokens, obs.block_tokens)
        keep = {
            key(b)
            for b in obs.blocks
            if b.index * obs.block_tokens < self.sink_tokens or b.position_from_end < window
        }
        return _demote_all(obs.blocks, keep, Precision.EVICTED)


@dataclass(frozen=True, slots=True)
class H2OTiering:
    """H2O (Zhang et al. 2023, "H2O: heavy-hitter oracle for efficient generative inference"):
    per request keep the ``heavy_frac`` of its blocks with the most accumulated attention mass
    (heavy hitters) plus a window of the newest ``recent_tokens`` tokens; evict the rest.  The
    paper's default budget is 20 % heavy hitters.  Kept blocks keep their precision."""

    kind: Literal["h2o"] = "h2o"
    observes_blocks: ClassVar[bool] = True
    heavy_frac: float = 0.2
    recent_tokens: int = 256

    def __post_init__(self) -> None:
        _check(0.0 <= self.heavy_frac <= 1.0, "h2o: heavy_frac must be in [0, 1]")
        _check(self.recent_tokens >= 0, "h2o: recent_tokens must be >= 0")

    def decide(self, obs: TieringObservation) -> TieringDecision:
        recent = blocks_for_tokens(self.recent_tokens, obs.block_tokens)
        keep = heavy_and_recent(obs.blocks, self.heavy_frac, recent)
        return _demote_all(obs.blocks, keep, Precision.EVICTED)


@dataclass(frozen=True, slots=True)
class MiKVTiering:
    """MiKV (Yang et al. 2024, "No token left behind: reliable KV cache compression via
    importance-aware mixed precision quantization"): select heavy hitters and a recent window as
    H2O does, but demote the other blocks to ``low`` instead of evicting them, so the model can
    still attend to them.  Never evicts.  Heavy hitters and the window stay as written (FP16);
    a block demoted earlier that later becomes a heavy hitter stays demoted, because MiKV keeps
    no full-precision copy to restore it from."""

    kind: Literal["mikv"] = "mikv"
    observes_blocks: ClassVar[bool] = True
    heavy_frac: float = 0.2
    recent_tokens: int = 256
    low: Literal["int4", "int2"] = "int4"

    def __post_init__(self) -> None:
        _check(0.0 <= self.heavy_frac <= 1.0, "mikv: heavy_frac must be in [0, 1]")
        _check(self.recent_tokens >= 0, "mikv: recent_tokens must be >= 0")
        _check(self.low in _LOW_BITS, f"mikv: low must be one of {_LOW_BITS}")

    def decide(self, obs: TieringObservation) -> TieringDecision:
        recent = blocks_for_tokens(self.recent_tokens, obs.block_tokens)
        keep = heavy_and_recent(obs.blocks, self.heavy_frac, recent)
        return _demote_all(obs.blocks, keep, Precision[self.low.upper()])
