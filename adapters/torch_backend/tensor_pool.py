"""Step buffers for real: tensors sized and reused as the scenario's buffer policy decides.

``sim.engine.buffer_pool.BufferPool`` asks the policy and keeps the counters (allocations, bytes,
reuses, reserved vs used); this pool holds the tensors behind its decisions: the buffer held under
each name, and released tensors by size, so that a policy's "reuse from the pool" really reuses
memory.
"""

from __future__ import annotations

import torch

from sim.engine.buffer_pool import POOL_LEN, BufferPool


class TensorPool:
    def __init__(self, buffers: BufferPool, device: torch.device):
        self.buffers, self.device = buffers, device
        self.held: dict[str, torch.Tensor] = {}
        self.free: list[torch.Tensor] = []  # released tensors, newest last
        self.num_allocs = 0  # real torch allocations made

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape`` viewing the buffer held under ``name``, after the policy's
        decision for this request (keep, take from the pool, or allocate its size)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = itemsize
        for n in shape:
            need *= n
        allocs, _, _ = self.buffers.request(name, need)
        size = self.buffers.held[name]  # bytes the policy holds for it now
        buf = self.held.get(name)
        if allocs or buf is None or buf.numel() != size:
            if buf is not None:
                self._release(buf)
            buf = self._new(size) if allocs else self._take(size)
            self.held[name] = buf
        return buf[:need].view(dtype).view(shape)

    def _new(self, size: int) -> torch.Tensor:
        self.num_allocs += 1
        return torch.empty(size, dtype=torch.uint8, device=self.device)

    def _take(self, size: int) -> torch.Tensor:
        """The policy reused a pooled size: that tensor (allocated only if it was dropped)."""
        for i, t in enumerate(self.free):
            if t.numel() == size:
                return self.free.pop(i)
        return self._new(size)

    def _release(self, buf: torch.Tensor) -> None:
        self.free.append(buf)
        del self.free[:-POOL_LEN]
