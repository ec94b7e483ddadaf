"""Step buffers for real: the buffer policy's decisions become torch allocations and reuses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.torch_backend.tensor_pool import TensorPool  # noqa: E402
from policies import ExactBuffers, PreallocatedBuffers  # noqa: E402
from policies.buffer_sizing import AdaptiveBuffers  # noqa: E402
from sim.engine.buffer_pool import BufferPool  # noqa: E402

ROWS = [1, 1, 3, 1, 2, 1, 1, 4, 1, 1]  # rows of logits per step (decode, verify, decode...)


def _run(policy) -> tuple[TensorPool, list[int]]:
    pool = TensorPool(BufferPool(policy), torch.device("cpu"))
    ptrs = []
    for rows in ROWS:
        out = pool.get("logits", (rows, 100), torch.float32)
        out.fill_(rows)  # writable, of the asked shape
        assert out.shape == (rows, 100)
        ptrs.append(out.data_ptr())
    return pool, ptrs


def test_exact_allocates_every_step():
    pool, ptrs = _run(ExactBuffers())
    assert pool.num_allocs == len(ROWS) == pool.buffers.stats.num_allocs


def test_preallocate_allocates_once_and_reuses_the_same_memory():
    pool, ptrs = _run(PreallocatedBuffers(max_bytes=4096))
    assert pool.num_allocs == 1 and len(set(ptrs)) == 1
    assert pool.buffers.stats.num_reuses == len(ROWS) - 1


def test_adaptive_allocates_less_than_exact():
    pool, _ = _run(AdaptiveBuffers())
    assert 1 <= pool.num_allocs < len(ROWS)
    assert pool.num_allocs == pool.buffers.stats.num_allocs
