"""The arena's in-place shift (``adapters.kv.tier_moves.shift``): the same tokens as a copy
through a temporary, whatever the overlap and direction."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from adapters.kv.tier_moves import shift  # noqa: E402


def test_a_shift_in_place_equals_one_through_a_temporary():
    tokens, tried = 40, 0
    for start, end, dest in itertools.product(range(0, 40, 3), range(0, 41, 4), range(0, 40, 5)):
        if end < start or dest + end - start > tokens:
            continue
        arena = torch.arange(2 * 3 * tokens * 2, dtype=torch.float32).reshape(2, 1, 3, tokens, 2)
        expected = arena.clone()
        expected[:, :, :, dest:dest + end - start] = arena[:, :, :, start:end].clone()
        shift(arena, start, end, dest)
        assert torch.equal(arena, expected), (start, end, dest)
        tried += 1
    assert tried > 300
