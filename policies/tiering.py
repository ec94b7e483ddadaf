"""Tiering family: the precision of every KV-cache block, and when to restore it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from policies.precision import Precision


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One KV block of one request, as the engine sees it at decision time."""

    request_id: int
    index: int  # position of the block in its request's sequence, 0 = oldest
    precision: Precision
    age_steps: int  # tokens written to the request since the block filled (= decode steps
    #                 without speculation; more per step with it)
    attention_mass: float  # attention the block received, summed over steps (each step sums to 1)
    access_count: int  # decode steps in which the block drew more than a uniform share of attention
    relevance: float = 0.0  # semantic relevance (cosine of mean key to recent queries), [-1, 1]
    position_from_end: int = 0  # 0 = the request's newest block
    attention_share: float = 0.0  # share of the latest step's attention, in [0, 1]
    has_backup: bool = False  # an FP16 copy of the block is kept in the host tier


@dataclass(frozen=True, slots=True)
class TierPressure:
    """Memory pressure of one storage tier: used / capacity, in [0, 1]."""

    tier: str  # "device" (where attention runs) or "host" (the offload tier)
    used_bytes: int
    capacity_bytes: int

    @property
    def pressure_frac(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes > 0 else 1.0


@dataclass(frozen=True, slots=True)
class TieringObservation:
    """Everything a tiering policy may look at before one re-tiering pass."""

    blocks: tuple[BlockInfo, ...]
    pressures: tuple[TierPressure, ...]
    block_tokens: int
    quality_delta_ppl: float = 0.0  # the quality signal: estimated perplexity change now
    step: int = 0  # decode steps run so far

    def pressure(self, tier: str = "device") -> float:
        for p in self.pressures:
            if p.tier == tier:
                return p.pressure_frac
        return 0.0


@dataclass(frozen=True, slots=True)
class TieringDecision:
    """New precision per block, as (request_id, block index, precision); blocks not named keep
    theirs.  ``new_block_precision`` is the precision freshly filled blocks are written at (a
    resident one).  ``keep_backup``: blocks demoted from FP16 keep an FP16 copy in the host tier,
    so raising them again is a copy; without a copy, raising a block means recomputing it from
    its token ids (the engine charges either)."""

    changes: tuple[tuple[int, int, Precision], ...] = ()
    new_block_precision: Precision = Precision.FP16
    keep_backup: bool = False


class TieringPolicy(Protocol):
    """Contract: ``decide`` returns only feasible changes (blocks that exist); the engine rejects
    anything else loudly.  ``observes_blocks`` False lets the engine skip building the per-block
    tuple (it can hold tens of thousands of blocks), passing ``blocks=()``."""

    kind: str
    observes_blocks: ClassVar[bool]

    def decide(self, obs: TieringObservation) -> TieringDecision: ...


@dataclass(frozen=True, slots=True)
class Fp16Tiering:
    """Baseline: every KV block stays at FP16."""

    kind: Literal["fp16"] = "fp16"
    observes_blocks: ClassVar[bool] = False

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


@dataclass(frozen=True, slots=True)
class UniformTiering:
    """Every block written at one precision (INT8, INT4 or INT2) from the start."""

    kind: Literal["uniform"] = "uniform"
    observes_blocks: ClassVar[bool] = False
    precision: Literal["int8", "int4", "int2"] = "int4"

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision(new_block_precision=Precision[self.precision.upper()])
