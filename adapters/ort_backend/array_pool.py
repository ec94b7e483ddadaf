"""Host arrays sized and reused as the scenario's buffer policy decides (the numpy twin of
``adapters.torch_backend.tensor_pool``), for buffers that ONNX Runtime reads and writes through
IOBinding.

``sim.engine.buffer_pool.BufferPool`` asks the policy and keeps its counters; this pool holds the
memory behind its decisions: one uint8 backing array per name, and released arrays by size, so
that a policy's "reuse from the pool" reuses real memory.  ``get`` returns a C-contiguous view at
the start of the backing array, which ``onnxruntime.OrtValue.ortvalue_from_numpy`` wraps without
a copy on the CPU.
"""

from __future__ import annotations

import time

import numpy as np

from sim.engine.buffer_pool import POOL_LEN, BufferPool


class ArrayPool:
    """Contract: the array returned by ``get(name, ...)`` stays valid until the next ``get`` or
    ``release`` of the same name; arrays of different names never share memory."""

    def __init__(self, buffers: BufferPool):
        self.buffers = buffers
        self.held: dict[str, np.ndarray] = {}
        self.free: list[np.ndarray] = []  # released backing arrays, newest last
        self.num_allocs = 0  # real allocations made
        self.alloc_bytes = 0
        self.alloc_s = 0.0  # seconds spent allocating, first touch of every page included

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type,
            preserve_bytes: int = 0) -> np.ndarray:
        """A view of ``shape`` on the buffer held under ``name`` after the policy's decision
        (keep, take from the pool, or allocate); contents are kept only if the buffer stays."""
        dtype = np.dtype(dtype)
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        allocs, _, _ = self.buffers.request(name, need, preserve_bytes)
        size = self.buffers.held[name]  # bytes the policy holds for it now
        buf = self.held.get(name)
        if allocs or buf is None or buf.size != size:
            if buf is not None:
                self._release(buf)
            buf = self._new(size) if allocs else self._take(size)
            self.held[name] = buf
        return buf[:need].view(dtype).reshape(shape)

    def release(self, name: str) -> None:
        buf = self.held.pop(name, None)
        self.buffers.release(name)
        if buf is not None:
            self._release(buf)

    def _new(self, size: int) -> np.ndarray:
        """A new backing array, its pages touched here (the OS maps them on first write, which
        would otherwise be paid, unseen, inside the next session run)."""
        t0 = time.perf_counter()
        buf = np.empty(size, dtype=np.uint8)
        buf[::4096] = 0
        self.alloc_s += time.perf_counter() - t0
        self.num_allocs += 1
        self.alloc_bytes += size
        return buf

    def _take(self, size: int) -> np.ndarray:
        for i, a in enumerate(self.free):
            if a.size == size:
                return self.free.pop(i)
        return self._new(size)

    def _release(self, buf: np.ndarray) -> None:
        self.free.append(buf)
        del self.free[:-POOL_LEN]
