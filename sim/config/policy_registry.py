"""The registry of policies: every policy class of every family, selectable by its ``kind``.

Adding a policy = its module in ``policies/`` + its class named here.
"""

from __future__ import annotations

import dataclasses

from policies import (
    ExactBuffers,
    FixedSpeculation,
    Fp16Tiering,
    NoSpeculation,
    PreallocatedBuffers,
    SinglePlacement,
    StaticPlacement,
    UniformTiering,
)
from policies.buffer_sizing import AdaptiveBuffers, Pow2Buffers
from policies.scheduling_policies import (
    AmdHybridScheduling,
    LeastFinishTimeScheduling,
    PaperScheduling,
)
from policies.speculation_control import (
    DynamicSpeculation,
    GoodputSpeculation,
    HfHeuristicSpeculation,
)
from policies.tiering_baselines import H2OTiering, KiviTiering, MiKVTiering, StreamingTiering
from policies.tiering_paper import ProgressiveTiering

FAMILIES: dict[str, tuple[type, ...]] = {
    "tiering": (Fp16Tiering, UniformTiering, ProgressiveTiering, KiviTiering, StreamingTiering,
                H2OTiering, MiKVTiering),
    "buffers": (ExactBuffers, PreallocatedBuffers, AdaptiveBuffers, Pow2Buffers),
    "speculation": (NoSpeculation, FixedSpeculation, HfHeuristicSpeculation, GoodputSpeculation,
                    DynamicSpeculation),
    "scheduling": (SinglePlacement, StaticPlacement, PaperScheduling, AmdHybridScheduling,
                   LeastFinishTimeScheduling),
}

# The family's plain baseline: a technique counts as "enabled" (coefficient model) when the
# scenario's policy for that family is of another kind.
BASELINE_KIND = {"tiering": "fp16", "buffers": "exact", "speculation": "off",
                 "scheduling": "single"}


def kind_of(cls: type) -> str:
    return str(next(f.default for f in dataclasses.fields(cls) if f.name == "kind"))


def by_kind(family: str) -> dict[str, type]:
    return {kind_of(c): c for c in FAMILIES[family]}


def param_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
