"""The run's random streams, each named, all derived from the scenario's one seed.

Stream ``name`` is child ``STREAMS.index(name)`` of ``numpy.random.SeedSequence(seed)`` (the same
generator ``SeedSequence(seed).spawn(n)[i]`` gives), so adding a stream at the end changes none of
the others.  The synthetic attention model seeds itself per request from ``(seed, request id)``.
"""

from __future__ import annotations

import numpy as np

# the order is the contract: append, never reorder
STREAMS = ("arrivals", "prompt_lengths", "output_lengths", "acceptance", "prompt_tokens")


def random_stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name`` (one of ``STREAMS``) for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS.index(name),)))
