"""Shared builders and Hypothesis strategies of the speculation-policy tests
(``test_speculation``, ``test_speculation_dynamic``): observations built by
hand and random ones."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st

from policies.speculation import SpecObservation

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)


def obs_of(
    acceptance: float = 0.0,
    history: tuple[float, ...] = (),
    last_k: int = 0,
    all_accepted: bool = False,
    draft_s: float = 0.1,
    verify_s: float = 1.0,
    max_k: int = 8,
    steps_since_draft: int = 0,
    verify_token_s: float = 0.0,
) -> SpecObservation:
    return SpecObservation(
        acceptance,
        history,
        last_k,
        all_accepted,
        draft_s,
        verify_s,
        max_k,
        steps_since_draft=steps_since_draft,
        verify_token_s=verify_token_s,
    )


# -- strategies ----------------------------------------------------------------------------------
fracs = st.floats(0.0, 1.0)
costs = st.one_of(st.just(0.0), st.floats(1e-6, 1e3))  # 0 = not yet measured
known_costs = st.floats(1e-6, 1e3)


@st.composite
def spec_observations(draw, acceptance=fracs, draft_s=costs, verify_s=costs):
    return SpecObservation(
        acceptance=draw(acceptance),
        acceptance_history=tuple(draw(st.lists(fracs, max_size=32))),
        last_draft_len=draw(st.integers(0, 20)),
        last_all_accepted=draw(st.booleans()),
        draft_token_s=draw(draft_s),
        verify_s=draw(verify_s),
        max_draft_len=draw(st.integers(0, 16)),
        batch_size=draw(st.integers(1, 256)),
        steps_since_draft=draw(st.integers(0, 200)),
        verify_token_s=draw(costs),
        verify_extra_s=tuple(draw(st.lists(st.one_of(st.none(), costs), max_size=16))),
    )
