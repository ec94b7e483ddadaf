"""Moving blocks between tiers in ``adapters.kv.paged.PagedKV`` (a mixin: the store's state is
``PagedKV``'s).

A move follows the engine's store (``sim.engine.kv_store.PagedKVStore.set_precision``) so that
one policy does the same thing on both sides:

- **backups**: a block demoted from FP16 with ``keep_backup`` (the engine's store says which,
  ``backups_raw``: the host copy is best effort) keeps an FP16 copy in host memory (pinned on
  CUDA).  A block with a copy is re-quantized from it (a further demotion, or a rise to a higher
  quantized precision: exact, not from its codes), offloaded by keeping it (no second copy), and
  restored to FP16 by copying it back: exactly.  Eviction drops it;
- **restores** without a copy: an offloaded block is copied back; a quantized or evicted one is
  recomputed (the ``recompute`` function) when it rises, so that a restored block holds what the
  engine says it holds (its own precision's values, not a dequantized lower one's); without a
  ``recompute`` function a quantized block is dequantized (the calibration's timings);
- the FP16 blocks leaving for one tier at once leave the arena in one pass (``set_precisions``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from adapters.kv.segments import GROWTH, Segment, quantize_blocks
from policies import Precision

BITS = {Precision.INT8: 8, Precision.INT4: 4, Precision.INT2: 2}
Recompute = Callable[[int, int], torch.Tensor]  # (rid, block) -> K/V [L, 2, K, bt, D]


def _runs(slots: list[int], bt: int, used: int) -> list[tuple[int, int]]:
    """The arena's token ranges that stay, after the first of ``slots`` (sorted) leaves."""
    edges = [(s * bt, (s + 1) * bt) for s in slots]
    starts = [e for _, e in edges]
    ends = [s for s, _ in edges[1:]] + [used]
    return [(a, b) for a, b in zip(starts, ends) if b > a]


def shift(arena: torch.Tensor, start: int, end: int, dest: int) -> None:
    """``arena[..., start:end]`` (tokens on dim 3) moved to start at ``dest``, in place and with
    no temporary: copied in chunks no longer than the gap, from the end it moves towards, so
    that no chunk overlaps its destination (a clone allocated fresh memory of the shift's size
    every time, whose page faults made a measured eviction cost twice what the calibration's
    repeated one did)."""
    n, gap = end - start, abs(dest - start)
    if n <= 0 or gap == 0:
        return
    offsets = range(0, n, gap) if dest < start else reversed(range(0, n, gap))
    for o in offsets:
        k = min(gap, n - o)
        arena[:, :, :, dest + o:dest + o + k].copy_(arena[:, :, :, start + o:start + o + k])


class TierMoves:
    """``set_precision`` / ``set_precisions`` of ``PagedKV``."""

    def expect_blocks(self, rid: int, precision: Precision, blocks: int) -> None:
        """``rid``'s segment at ``precision`` is created with room for ``blocks`` blocks (the
        blocks the request will hold there: a prompt's and the output's the engine reserved),
        so that blocks filling later are quantized into room, not into a grown copy of every
        block before them (measured: the first block filled after a 2,048-token prompt held at
        INT4 read 15-28 % over its prediction, growing its 128-block segment)."""
        self.requests[rid].room[Precision(precision)] = int(blocks)

    @torch.inference_mode()
    def set_precision(self, rid: int, block: int, precision: Precision,
                      recompute: Recompute | None = None, backup: bool = False) -> bool:
        """Move one full block to ``precision``; ``backup``: it keeps (or goes on keeping) an
        FP16 host copy, if it ends quantized.  Returns False (and does nothing) for the partial
        last block, which stays FP until it fills."""
        r = self.requests[rid]
        precision = Precision(precision)
        if block >= self._full_blocks(r):
            if block * self.bt >= r.num_tokens:
                raise ValueError(f"request {rid} has no block {block}")
            return False
        current = self.block_precision(rid, block)
        if current == precision:
            return True
        kv, copy = self._take(r, rid, block, current, precision, recompute)
        self._put(rid, block, precision, kv, copy, backup)
        return True

    @torch.inference_mode()
    def set_precisions(self, rid: int, blocks: list[int], precisions: list[int],
                       recompute: Recompute | None = None,
                       backups: list[bool] | None = None) -> list[int]:
        """Move each block to its precision (``set_precision`` for each, in this order of
        targets; ``backups``: per block, as ``set_precision``'s ``backup``); FP16 blocks bound for
        the same other tier leave the arena in one pass (each quantized or copied from its slot,
        the arena compacted once: a prompt of n blocks costs n blocks' quantizing, and n
        evictions one shift, not n).  -> the blocks now at their precision (all but the partial
        last block)."""
        r = self.requests[rid]
        keep = dict(zip(blocks, backups)) if backups is not None else {}
        moved: list[int] = []
        for target in dict.fromkeys(int(p) for p in precisions):  # first-seen order of targets
            group = [b for b, p in zip(blocks, precisions) if int(p) == target]
            prec = Precision(target)
            batch = sorted(b for b in group if b < self._full_blocks(r)
                           and self.block_precision(rid, b) == Precision.FP16)
            rest = [b for b in group if b not in batch] if prec != Precision.FP16 else group
            # the rest first (none touches the arena: the batch's slots stay put)
            moved += [b for b in rest
                      if self.set_precision(rid, b, prec, recompute, keep.get(b, False))]
            if batch and prec != Precision.FP16:
                self._move_fp(r, prec, batch, [keep.get(b, False) for b in batch])
                moved += batch
        return moved

    def _move_fp(self, r, precision: Precision, blocks: list[int], backups: list[bool]) -> None:
        """FP blocks out of the arena to ``precision``, each from its slot (one block's working
        set stays in cache: 32 quantized at once took twice as long), then one compaction."""
        bt, used = self.bt, self._fp_tokens(r)
        slots = [r.fp_blocks.index(b) for b in blocks]
        seg = r.segments.setdefault(precision, Segment()) if precision in BITS else None
        expect = len(seg.blocks) + len(blocks) if seg else 0
        if seg is not None and not seg.blocks:
            # a segment this pass makes: room for what the engine reserved at this precision,
            # else for half as many again (a re-tiering target's blocks come pass after pass:
            # made exact, the next single block grew it, a copy of all of it, uncharged)
            room = r.room.get(precision, 0)
            expect = max(expect, room) if room else int(GROWTH * expect) + 1
        for b, i, backup in zip(blocks, slots, backups):
            kv = r.arena[:, :, :, i * bt:(i + 1) * bt]  # [L, 2, K, bt, D]
            if seg is not None:
                seg.append([b], quantize_blocks(kv[None], BITS[precision], self.group), expect)
                if backup:
                    r.backup[b] = self._to_host(kv)
            elif precision == Precision.OFFLOADED:
                r.host[b] = self._to_host(kv)
            r.precision[b] = precision
        self.shift_passes += precision not in BITS
        dest = min(slots) * bt  # what stays after the first slot leaving shifts down, run by run
        for start, end in _runs(sorted(slots), bt, used):
            if start > dest:
                shift(r.arena, start, end, dest)
            self.copy_bytes += (end - start) * self.token_bytes()
            dest += end - start
        for b in blocks:
            r.fp_blocks.remove(b)

    def _to_host(self, kv: torch.Tensor) -> torch.Tensor:
        host = kv.to("cpu", copy=True)
        return host.pin_memory() if self.pin else host

    def _take(self, r, rid: int, block: int, current: Precision, target: Precision,
              recompute: Recompute | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The block out of its tier -> (its K/V on the device [L, 2, K, bt, D] or None where
        the target needs none, its FP16 host copy or None)."""
        if current == Precision.FP16:
            i = r.fp_blocks.index(block)
            s, e = i * self.bt, (i + 1) * self.bt
            kv = r.arena[:, :, :, s:e].clone()
            used = self._fp_tokens(r)
            shift(r.arena, e, used, s)
            self.copy_bytes += (used - e) * self.token_bytes()
            r.fp_blocks.pop(i)
            return kv, None
        del r.precision[block]
        copy = r.backup.pop(block, None)
        if current in BITS:
            seg = r.segments[current]
            i = seg.blocks.index(block)
            exact = copy is not None or target == Precision.EVICTED
            kv = None if exact else self._quantized_source(seg, current, i, target, rid, block,
                                                           recompute)
            seg.drop(i)
            if not seg.blocks:
                del r.segments[current]
            if copy is not None and target not in (Precision.OFFLOADED, Precision.EVICTED):
                kv = copy.to(self.device, non_blocking=False)
            return kv, copy
        if current == Precision.OFFLOADED:
            return r.host.pop(block).to(self.device, non_blocking=False), None
        if recompute is None:  # EVICTED
            raise ValueError(f"block {block} of request {rid} was evicted and no recompute "
                             "function was given")
        return recompute(rid, block).to(self.dtype), None

    def _quantized_source(self, seg: Segment, current: Precision, i: int, target: Precision,
                          rid: int, block: int, recompute: Recompute | None) -> torch.Tensor:
        """A quantized block with no FP16 copy: recomputed when it rises (if it can be),
        else its codes dequantized."""
        if target < current and recompute is not None:
            return recompute(rid, block).to(self.dtype)
        return self._dequant_block(seg, BITS[current], i)

    def _put(self, rid: int, block: int, precision: Precision, kv: torch.Tensor | None,
             copy: torch.Tensor | None, backup: bool) -> None:
        r = self.requests[rid]
        if precision == Precision.FP16:
            i = sum(b < block for b in r.fp_blocks)
            # the block was taken from its tier (_take): _fp_tokens counts it in the arena's tail
            used = self._fp_tokens(r) - self.bt
            self._ensure(rid, used + self.bt, used)
            r = self.requests[rid]
            s = i * self.bt
            shift(r.arena, s, used, s + self.bt)
            r.arena[:, :, :, s:s + self.bt] = kv
            self.copy_bytes += (used - s) * self.token_bytes()
            self.shift_passes += 1
            r.fp_blocks.insert(i, block)
            return
        r.precision[block] = precision
        if precision in BITS:
            seg = r.segments.setdefault(precision, Segment())
            seg.append([block], quantize_blocks(kv.unsqueeze(0), BITS[precision], self.group),
                       0 if seg.blocks else r.room.get(precision, 0))
            if backup:  # the copy it had, or one of the FP16 block it was
                r.backup[block] = copy if copy is not None else self._to_host(kv)
        elif precision == Precision.OFFLOADED:
            r.host[block] = copy if copy is not None else self._to_host(kv)
        # EVICTED: dropped
