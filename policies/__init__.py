"""Pure decision modules: observations in, decisions out. Standard library only.

One ``Protocol`` per family (tiering, buffers, speculation, scheduling), each with a single
``decide(observation) -> decision`` method.  Policies are frozen dataclasses whose fields are their
parameters plus a ``kind`` tag; observations and decisions are frozen, slotted dataclasses of plain
numbers, enums and tuples.  ``decide`` reads no clock, draws no global randomness and does no I/O:
history (EWMAs, windows) is kept by the engine and passed in.
"""

from policies.buffers import (
    BufferDecision,
    BufferObservation,
    BufferPolicy,
    ExactBuffers,
    PreallocatedBuffers,
)
from policies.precision import Precision
from policies.scheduling import (
    DeviceLoad,
    OpEstimate,
    Placement,
    SchedulingObservation,
    SchedulingPolicy,
    SinglePlacement,
    StaticPlacement,
)
from policies.speculation import (
    FixedSpeculation,
    NoSpeculation,
    SpecDecision,
    SpecObservation,
    SpeculationPolicy,
)
from policies.tiering import (
    BlockInfo,
    Fp16Tiering,
    TieringDecision,
    TieringObservation,
    TieringPolicy,
    TierPressure,
    UniformTiering,
)

__all__ = [
    "BlockInfo",
    "BufferDecision",
    "BufferObservation",
    "BufferPolicy",
    "DeviceLoad",
    "ExactBuffers",
    "FixedSpeculation",
    "Fp16Tiering",
    "NoSpeculation",
    "OpEstimate",
    "Placement",
    "PreallocatedBuffers",
    "Precision",
    "SchedulingObservation",
    "SchedulingPolicy",
    "SinglePlacement",
    "SpecDecision",
    "SpecObservation",
    "SpeculationPolicy",
    "StaticPlacement",
    "TierPressure",
    "TieringDecision",
    "TieringObservation",
    "TieringPolicy",
    "UniformTiering",
]
