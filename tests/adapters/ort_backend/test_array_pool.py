"""Host buffers for IOBinding: the buffer policy's decisions become numpy allocations and reuses;
buffers held under different names never share memory, whatever the sequence of requests."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ort_backend.array_pool import ArrayPool
from policies import ExactBuffers, PreallocatedBuffers
from policies.buffer_sizing import AdaptiveBuffers, Pow2Buffers
from sim.engine.buffer_pool import BufferPool

ROWS = [1, 1, 3, 1, 2, 1, 1, 4, 1, 1]  # rows of logits per step


def _run(policy) -> tuple[ArrayPool, list[int]]:
    pool = ArrayPool(BufferPool(policy))
    ptrs = []
    for rows in ROWS:
        out = pool.get("logits", (rows, 100), np.float32)
        out[...] = rows  # writable, of the asked shape, C-contiguous (what OrtValue wraps)
        assert out.shape == (rows, 100) and out.flags.c_contiguous
        ptrs.append(out.ctypes.data)
    return pool, ptrs


def test_exact_allocates_every_step():
    pool, _ = _run(ExactBuffers())
    assert pool.num_allocs == len(ROWS) == pool.buffers.stats.num_allocs


def test_preallocate_allocates_once_and_reuses_the_same_memory():
    pool, ptrs = _run(PreallocatedBuffers(max_bytes=4096))
    assert pool.num_allocs == 1 and len(set(ptrs)) == 1
    assert pool.alloc_bytes == 4096


POLICIES = [ExactBuffers(), Pow2Buffers(), AdaptiveBuffers(),
            PreallocatedBuffers(max_bytes=1 << 16)]
OPS = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3000)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(policy=st.sampled_from(POLICIES), ops=OPS)
def test_named_buffers_never_alias_and_match_the_policy(policy, ops):
    pool = ArrayPool(BufferPool(policy))
    for name, size in ops:
        if size == 0:  # a zero request stands for "this buffer is released"
            pool.release(name)
            continue
        pool.get(name, (size,), np.uint8)[...] = ord(name)
        held = pool.held
        for n, arr in held.items():  # each backing array is what the policy holds for it
            assert arr.nbytes == pool.buffers.held[n]
        names = sorted(held)
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                assert not np.shares_memory(held[x], held[y])
    assert pool.num_allocs <= pool.buffers.stats.num_allocs + pool.buffers.stats.num_reuses
