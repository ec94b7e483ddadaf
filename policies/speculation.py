"""Speculation family: whether to speculate, how many draft tokens, with what threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class SpecObservation:
    """What the engine knows just before it plans one decode step."""

    acceptance: float  # EWMA of accepted / proposed draft tokens, in [0, 1]
    acceptance_history: tuple[float, ...]  # per-step acceptance fractions, oldest first
    last_draft_len: int  # k used in the previous step (0 = no speculation)
    last_all_accepted: bool  # every draft token of the last step that proposed any was accepted
    draft_token_s: float  # cost of one draft token (predicted or measured; 0 = not yet known)
    verify_s: float  # cost of a target pass over the last token alone, k = 0 (0 = not yet known)
    max_draft_len: int  # the engine's hard limit on k
    batch_size: int = 1  # sequences in the step being planned
    steps_since_draft: int = 0  # decode steps since the last one that drafted (probing)
    # Extra cost of the verify pass per draft token it verifies: a pass over k drafts costs
    # verify_s + k * verify_token_s.  0 = flat in k (a memory-bound target) or not yet measured.
    verify_token_s: float = 0.0
    # The same, measured per draft length: entry k - 1 is the extra seconds of a verify pass over
    # k drafts (not per token), None where no step has drafted k.  A CPU's pass cost steps with
    # its rows rather than growing in line with them (``speculation_control.verify_extra``).
    verify_extra_s: tuple[float | None, ...] = ()


@dataclass(frozen=True, slots=True)
class SpecDecision:
    """``draft_len`` = k draft tokens to propose (0 = plain decode); ``threshold`` is the draft
    confidence below which drafting stops early (0 = never)."""

    draft_len: int
    threshold: float = 0.0


class SpeculationPolicy(Protocol):
    kind: str

    def decide(self, obs: SpecObservation) -> SpecDecision: ...


@dataclass(frozen=True, slots=True)
class NoSpeculation:
    """Baseline: never speculate."""

    kind: Literal["off"] = "off"

    def decide(self, obs: SpecObservation) -> SpecDecision:
        return SpecDecision(draft_len=0)


@dataclass(frozen=True, slots=True)
class FixedSpeculation:
    """Always propose ``k`` draft tokens (clamped to the engine's limit)."""

    kind: Literal["fixed"] = "fixed"
    k: int = 4

    def decide(self, obs: SpecObservation) -> SpecDecision:
        return SpecDecision(draft_len=max(0, min(self.k, obs.max_draft_len)))
