"""The torch KV store with a precision per block: what the real executor attends over.

Per request, all layers together:

- an **FP arena** ``[L, 2, H_kv, capacity, D]`` (K and V) in the KV dtype (FP16 by default) holding
  the full-precision blocks, compacted in block order, the partly filled last block at the end;
  its capacity grows by the buffer policy (``grow`` callback), the old contents copied over;
- one **segment per quantized precision** (INT8 / INT4 / INT2; ``adapters.kv.segments``, grown
  in place): the packed codes, FP16 scales and zero points of its blocks, stacked
  ``[n_blocks, ...]`` (keys per channel, values per token, groups of ``group`` values);
- **offloaded** blocks: an FP copy in host memory (pinned on CUDA), not attended to, restored
  by copy;
- **evicted** blocks: nothing; restored by recomputing their K/V from the token ids (the caller
  supplies the recompute function);
- **backups**: FP16 host copies of quantized blocks, where the engine's store keeps them
  (``keep_backup``); a block with one is restored or re-quantized from it, exactly.

The moves between tiers are ``adapters.kv.tier_moves`` (this class's ``set_precision`` and
``set_precisions``).

Every method that allocates or moves tensors runs in ``torch.inference_mode``; ``write`` and
``layer_kv``, on the hot path, are called from a forward that already does.  The view the model
sees during one forward is ``adapters.kv.paged_step.PagedStep``.

Attention over past tokens does not depend on their order (RoPE is applied before caching), so a
layer's keys are ``[dequantized segments..., FP arena]``; only new tokens need a causal mask.
Decode steps read blocks in place (``adapters.kv.fused``); others dequantize a layer at a time.

The partly filled last block stays FP whatever precision it is given, until it fills (KIVI's
full-precision residual); then it takes its precision.  Rollback (``truncate``) removes tokens from
the end of the arena only: speculative tokens are always in the last blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adapters.kv.segments import Segment, dequantize
from adapters.kv.tier_moves import BITS, Recompute, TierMoves
from policies import Precision

__all__ = ["BITS", "PagedKV", "Recompute"]
QUANTIZED = tuple(BITS)
HOST_TIERS = ("offloaded", "evicted", "backup")  # keys of bytes_by_precision not on the device


@dataclass
class _Request:
    arena: torch.Tensor  # [L, 2, K, capacity, D]
    num_tokens: int = 0  # tokens whose K/V are stored or accounted (all tiers)
    fp_blocks: list[int] = field(default_factory=list)  # full FP blocks in arena order
    precision: dict[int, Precision] = field(default_factory=dict)  # blocks not FP16
    segments: dict[Precision, Segment] = field(default_factory=dict)
    host: dict[int, torch.Tensor] = field(default_factory=dict)  # offloaded: [L, 2, K, bt, D]
    backup: dict[int, torch.Tensor] = field(default_factory=dict)  # FP16 host copies of quantized
    # blocks a segment at a precision is created with room for (``expect_blocks``)
    room: dict[Precision, int] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return self.arena.shape[3]


Grow = Callable[[int, int, int], int]  # (rid, needed tokens, current capacity) -> new capacity


class PagedKV(TierMoves):
    """Contract: after every call, each block of a request is in exactly one tier, the arena
    holds exactly the FP blocks (in block order) followed by the partial last block, and
    ``bytes_by_precision`` is the byte size of the tensors that hold them."""

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, block_tokens: int,
                 group: int = 64, dtype: torch.dtype = torch.float16,
                 device: torch.device | str = "cpu", grow: Grow | None = None,
                 reuse: Callable[[int], torch.Tensor | None] | None = None):
        if block_tokens < 1 or group < 1:  # a zero would make append loop forever
            raise ValueError(f"block_tokens ({block_tokens}) and group ({group}) must be >= 1")
        self.L, self.K, self.D = num_layers, num_kv_heads, head_dim
        self.bt, self.group, self.dtype = block_tokens, group, dtype
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.grow = grow or (lambda rid, need, cap: max(need, 2 * cap))
        self.reuse = reuse or (lambda capacity: None)  # a released arena of that capacity
        self.requests: dict[int, _Request] = {}
        self.num_allocs = 0
        self.num_reuses = 0
        self.alloc_bytes = 0
        self.copy_bytes = 0
        self.shift_passes = 0  # evictions and offloads out of the arena, and restores into it

    # -- requests ------------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> torch.Tensor:
        reused = self.reuse(capacity)
        if reused is not None:
            self.num_reuses += 1
            return reused
        shape = (self.L, 2, self.K, capacity, self.D)
        t = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.num_allocs += 1
        self.alloc_bytes += t.numel() * t.element_size()
        return t

    @torch.inference_mode()
    def add(self, rid: int, capacity_tokens: int = 0) -> None:
        if rid in self.requests:
            raise ValueError(f"request {rid} is already stored")
        cap = self.grow(rid, max(capacity_tokens, 1), 0)
        self.requests[rid] = _Request(self._alloc(cap))

    def free(self, rid: int) -> None:
        self.requests.pop(rid, None)

    def __contains__(self, rid: int) -> bool:
        return rid in self.requests

    def num_tokens(self, rid: int) -> int:
        return self.requests[rid].num_tokens

    def block_precision(self, rid: int, block: int) -> Precision:
        return self.requests[rid].precision.get(block, Precision.FP16)

    def _fp_tokens(self, r: _Request) -> int:
        """Tokens in the arena: the full FP blocks plus the partial (or not yet tiered) tail."""
        return len(r.fp_blocks) * self.bt + (r.num_tokens - self._full_blocks(r) * self.bt)

    def _full_blocks(self, r: _Request) -> int:
        """Blocks that are full *and* placed in a tier (the tail block is in the arena)."""
        return len(r.fp_blocks) + len(r.precision)

    # -- writing -------------------------------------------------------------------------------
    @torch.inference_mode()
    def reserve(self, rid: int, new_tokens: int) -> None:
        """Make room in the arena for ``new_tokens`` more tokens (the grow policy decides how
        much more); a move copies the live contents."""
        self._ensure(rid, self._fp_tokens(self.requests[rid]) + new_tokens)

    def _ensure(self, rid: int, need: int, used: int | None = None) -> None:
        """``used``: the arena's live tokens, when a block is between tiers (``_put``)."""
        r = self.requests[rid]
        if need <= r.capacity:
            return
        cap = self.grow(rid, need, r.capacity)
        if cap < need:
            raise ValueError(f"grow policy gave {cap} tokens, {need} needed")
        arena = self._alloc(cap)
        used = self._fp_tokens(r) if used is None else used
        arena[:, :, :, :used] = r.arena[:, :, :, :used]
        self.copy_bytes += used * self.token_bytes()
        r.arena = arena

    def write(self, rid: int, layer: int, k: torch.Tensor, v: torch.Tensor,
              offset: int) -> None:
        """Store new K/V ``[K, T, D]`` of one layer at arena rows ``offset .. offset + T``
        (``offset`` = the arena's token count before this step; see ``append``)."""
        r = self.requests[rid]
        t = k.shape[1]
        r.arena[layer, 0, :, offset:offset + t] = k
        r.arena[layer, 1, :, offset:offset + t] = v

    def append(self, rid: int, num_tokens: int) -> None:
        """Account ``num_tokens`` written by ``write`` this step; full tail blocks become FP
        blocks."""
        r = self.requests[rid]
        r.num_tokens += num_tokens
        while r.num_tokens - self._full_blocks(r) * self.bt >= self.bt:
            r.fp_blocks.append(self._full_blocks(r))

    def truncate(self, rid: int, num_tokens: int) -> None:
        """Roll back to the first ``num_tokens`` tokens (rejected speculative tokens).  Only
        tokens of FP blocks at the end can go."""
        r = self.requests[rid]
        if num_tokens > r.num_tokens:
            raise ValueError("truncate cannot add tokens")
        while self._full_blocks(r) * self.bt > num_tokens:
            last = self._full_blocks(r) - 1
            if not r.fp_blocks or r.fp_blocks[-1] != last:
                raise ValueError(f"cannot roll back into block {last}: it is "
                                 f"{self.block_precision(rid, last).name}")
            r.fp_blocks.pop()
        r.num_tokens = num_tokens

    def arena_tokens(self, rid: int) -> int:
        return self._fp_tokens(self.requests[rid])

    # -- reading -------------------------------------------------------------------------------
    def layer_kv(self, rid: int, layer: int, extra: int = 0,
                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V ``[K, S, D]`` of every resident token of one layer (segments dequantized now,
        then the arena) in ``dtype`` (default the KV dtype; float32 gets code * scale + zero
        unrounded, as the fused kernel).  ``extra``: tokens written this step, not appended."""
        r = self.requests[rid]
        dtype = dtype or self.dtype
        used = self._fp_tokens(r) + extra
        k, v = r.arena[layer, 0, :, :used].to(dtype), r.arena[layer, 1, :, :used].to(dtype)
        if not r.segments:
            return k, v
        parts = [self._dequant_layer(seg, BITS[prec], layer, dtype)
                 for prec, seg in r.segments.items()]
        return (torch.cat([*(p[0] for p in parts), k], dim=1),
                torch.cat([*(p[1] for p in parts), v], dim=1))

    def key_blocks(self, rid: int, extra: int = 0) -> torch.Tensor:
        """The block index of every key ``layer_kv(rid, layer, extra)`` returns, in its order
        (int64 [S], on the CPU); the ``extra`` new tokens belong to the blocks at their
        positions."""
        r = self.requests[rid]
        bt = self.bt
        parts = [torch.tensor(seg.blocks).repeat_interleave(bt) for seg in r.segments.values()]
        parts.append(torch.tensor(r.fp_blocks, dtype=torch.int64).repeat_interleave(bt))
        tail = r.num_tokens - self._full_blocks(r) * bt  # stored tokens of the partial block
        first = self._full_blocks(r) * bt
        parts.append(torch.arange(first, first + tail + extra) // bt)
        return torch.cat(parts)

    def resident_tokens(self, rid: int) -> int:
        r = self.requests[rid]
        return self._fp_tokens(r) + sum(len(s.blocks) for s in r.segments.values()) * self.bt

    # -- quantized segments ----------------------------------------------------------------
    def dequant(self, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                bits: int, per_channel: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``segments.dequantize`` at this store's shape, in ``dtype`` (default: the KV dtype);
        also the ort executor's staging."""
        return dequantize(data, scales, zeros, bits, per_channel, (self.K, self.bt, self.D),
                          self.group).to(dtype or self.dtype)

    def _dequant_layer(self, seg: Segment, bits: int, layer: int,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        assert seg.k_data is not None and seg.v_data is not None
        k = self.dequant(seg.k_data[:, layer], seg.k_scales[:, layer], seg.k_zeros[:, layer],
                          bits, True, dtype)
        v = self.dequant(seg.v_data[:, layer], seg.v_scales[:, layer], seg.v_zeros[:, layer],
                          bits, False, dtype)
        return k, v

    def _dequant_block(self, seg: Segment, bits: int, i: int) -> torch.Tensor:
        """One block, every layer -> [L, 2, K, bt, D]."""
        assert seg.k_data is not None and seg.v_data is not None
        out = torch.empty((self.L, 2, self.K, self.bt, self.D), dtype=self.dtype,
                          device=self.device)
        for layer in range(self.L):
            out[layer, 0] = self.dequant(seg.k_data[i:i + 1, layer], seg.k_scales[i:i + 1, layer],
                                          seg.k_zeros[i:i + 1, layer], bits, True)
            out[layer, 1] = self.dequant(seg.v_data[i:i + 1, layer], seg.v_scales[i:i + 1, layer],
                                          seg.v_zeros[i:i + 1, layer], bits, False)
        return out

    # -- accounting ------------------------------------------------------------------------
    def token_bytes(self) -> int:
        """Bytes of one token's K/V in an arena, every layer (what the buffer policy sizes)."""
        return self.L * 2 * self.K * self.D * torch.empty((), dtype=self.dtype).element_size()

    def bytes_by_precision(self) -> dict[str, int]:
        """True bytes of the tensors holding each tier's blocks (scales and zero points
        included); FP16 counts the tokens in the arenas (not their spare capacity), OFFLOADED
        the host copies, "backup" the FP16 host copies of quantized blocks."""
        out = {p.name.lower(): 0 for p in Precision} | {"backup": 0}
        tb = self.token_bytes()
        for r in self.requests.values():
            out["fp16"] += self._fp_tokens(r) * tb
            for prec, seg in r.segments.items():
                out[prec.name.lower()] += seg.nbytes()
            out["offloaded"] += sum(t.numel() * t.element_size() for t in r.host.values())
            out["backup"] += sum(t.numel() * t.element_size() for t in r.backup.values())
        return out

    def device_bytes(self) -> int:
        b = self.bytes_by_precision()
        return sum(v for k, v in b.items() if k not in HOST_TIERS)

    def reserved_bytes(self) -> int:
        """Device bytes held, arena capacity and segments' spare room included."""
        tb = self.token_bytes()
        return sum(r.capacity * tb + sum(s.reserved_nbytes() for s in r.segments.values())
                   for r in self.requests.values())

    def fp16_equiv_bytes(self) -> int:
        """What the resident tokens would take at 16 bits."""
        per_token = self.L * 2 * self.K * self.D * 2
        return sum(self.resident_tokens(rid) * per_token for rid in self.requests)

