"""Policies a user might write, good and bad, named by import path (``tests.plugin_policies:X``)
or registered by a test's fake distribution: what the registry must accept, refuse, and what a
run must survive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from policies import (
    Precision,
    SpecDecision,
    SpecObservation,
    TieringDecision,
    TieringObservation,
)


@dataclass(frozen=True, slots=True)
class KeepOldest:
    """A fine plugin: the oldest ``keep`` blocks of each request at FP16, the rest at INT8."""

    kind: Literal["keep-oldest"] = "keep-oldest"
    observes_blocks: ClassVar[bool] = True
    keep: int = 1
    pressure_cap: float = 1.0

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision(tuple(
            (b.request_id, b.index, Precision.INT8) for b in obs.blocks
            if b.index >= self.keep and b.precision == Precision.FP16))


@dataclass(frozen=True, slots=True)
class StatedFamily:
    """Family stated, ``decide`` not annotated."""

    kind: Literal["stated"] = "stated"
    family: ClassVar[str] = "speculation"

    def decide(self, obs):
        return SpecDecision(draft_len=0)


@dataclass(frozen=True, slots=True)
class RaisingTiering:
    """Raises inside ``decide`` from decode step ``after_step`` on."""

    kind: Literal["raising"] = "raising"
    after_step: int = 3

    def decide(self, obs: TieringObservation) -> TieringDecision:
        if obs.step >= self.after_step:
            raise ZeroDivisionError("planted bug\nwith a second line")
        return TieringDecision()


@dataclass(frozen=True, slots=True)
class InfeasibleTiering:
    """Writes new blocks offloaded: the engine refuses it on the first decision."""

    kind: Literal["infeasible"] = "infeasible"
    observes_blocks: ClassVar[bool] = False

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision(new_block_precision=Precision.OFFLOADED)


@dataclass(frozen=True, slots=True)
class NoneSpeculation:
    """Returns None instead of a SpecDecision."""

    kind: Literal["none-spec"] = "none-spec"

    def decide(self, obs: SpecObservation) -> SpecDecision:
        return None  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ShadowingTiering:
    """Calls itself ``fp16``, a built-in name."""

    kind: Literal["fp16"] = "fp16"

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


@dataclass(frozen=True, slots=True)
class MismatchedFamily:
    """States speculation, decides on tiering observations."""

    kind: Literal["mismatched"] = "mismatched"
    family: ClassVar[str] = "speculation"

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


@dataclass
class NotFrozen:
    kind: str = "not-frozen"

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


class NotADataclass:
    kind = "plain"

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


@dataclass(frozen=True)
class NoKind:
    level: int = 1

    def decide(self, obs: TieringObservation) -> TieringDecision:
        return TieringDecision()


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


@dataclass(frozen=True, slots=True)
class AnyFamily:
    """Neither states nor annotates its family: the scenario key decides (this one can only
    work as a buffers policy)."""

    kind: Literal["any-family"] = "any-family"

    def decide(self, obs):
        from policies import BufferDecision
        return BufferDecision(alloc_bytes=obs.requested_bytes)
