"""Preemption (``engine.preemption``: ``recompute`` or ``swap``), as vLLM's scheduler does it.

Admission reserves a request's prompt plus one block of headroom, not its whole output; before
each decode step every running request reserves the blocks its step may write (one token, or
1 + the draft length when speculating).  When that growth does not fit, the most recently admitted
running request is preempted, again until it fits:

- ``recompute``: its KV is freed and it goes back to the head of the waiting queue; re-admitted,
  its prefill covers the prompt and the tokens it had generated (the cost model charges that
  prefill), and it continues where it stopped (tokens emitted stay emitted, TTFT unchanged);
- ``swap``: its resident blocks move to the host tier (the copy charged to the next decode step,
  as the retierer charges an offload; recompute when the host tier has no room) and it goes back
  to the head of the waiting queue; resumed, its blocks are copied back and it rejoins the running
  set without a prefill.

``counts`` are the run's preemption metrics.
"""

from __future__ import annotations

import numpy as np

from policies import Precision
from sim.engine.kv_store import Admission


class Preemptor:
    """Contract: used only by the ``Engine`` it is built for (``mode``: recompute or swap)."""

    def __init__(self, engine, mode: str):
        if mode not in ("recompute", "swap"):
            raise ValueError(f"preemption mode {mode!r}")
        self.engine, self.mode = engine, mode
        self.resume_tokens: dict[int, int] = {}  # rid -> tokens generated before a recompute
        self.swapped: dict[int, tuple[list[int], bytes]] = {}  # rid -> (moved blocks, precisions)
        self._order: dict[int, int] = {}  # rid -> when it was last admitted (a sequence number)
        self._seq = 0
        # preempted by a budget shrink while a decode step may be running them: the step's
        # tokens are not theirs to keep (cleared when the next step is scheduled)
        self.stale: set[int] = set()
        self.counts = {"num_preemptions": 0, "num_recomputed": 0, "num_swapped": 0,
                       "recompute_tokens": 0, "swap_out_bytes": 0, "swap_in_bytes": 0}

    # -- admission ---------------------------------------------------------------------------
    def prefill_tokens(self, rid: int) -> int:
        """Tokens the request's prefill covers: its prompt, plus what it had generated when it
        was preempted for recompute (none when it was swapped out: it is copied back)."""
        if rid in self.swapped:
            return 0
        return int(self.engine.requests.prompt_tokens[rid]) + self.resume_tokens.get(rid, 0)

    def prefill_array(self, batch: list[int]) -> np.ndarray:
        return np.array([self.prefill_tokens(r) for r in batch], dtype=np.int64)

    def _admit_tokens(self, rid: int, prefill: int) -> int:
        """The prompt (and recomputed tokens) plus one block of headroom, within the total."""
        eng = self.engine
        return min(prefill + eng.store.block_tokens, eng.total_tokens(rid))

    def fits(self, rid: int, precision: Precision) -> bool:
        store = self.engine.store
        if rid in self.swapped:
            return self._swap_in_bytes(rid) <= self._free_bytes()
        need = self._admit_tokens(rid, self.prefill_tokens(rid))
        return store.can_admit(need, precision) is Admission.OK

    def admit(self, rid: int, prefill: int, total: int, precision: Precision) -> None:
        """Allocate the prefill's blocks and reserve one block of headroom (not the ``total``
        tokens ``PagedKVStore.admit`` would reserve)."""
        self.engine.store.admit(rid, prefill, self._admit_tokens(rid, prefill), precision)
        if rid in self.resume_tokens:
            self.counts["recompute_tokens"] += prefill
        self._admitted(rid)

    def _admitted(self, rid: int) -> None:
        self._seq += 1
        self._order[rid] = self._seq

    # -- before a decode step ----------------------------------------------------------------
    def make_room(self) -> None:
        """Reserve the blocks the running requests' next step may write; preempt the most
        recently admitted until they fit."""
        eng, store = self.engine, self.engine.store
        self.stale.clear()  # (the step before has been postprocessed)
        k = eng.planner.limits.max_draft_len if eng.planner.speculation.kind != "off" else 0
        while eng.running:
            rids = np.array(eng.running)
            left = eng.requests.output_tokens[rids] - eng.state.generated[rids]
            tokens = store.req_tokens[rids] + np.minimum(left, 1 + k)
            held = [store.reservation(r) for r in rids.tolist()]
            need = np.maximum(-(-tokens // store.block_tokens) - store.req_blocks[rids]
                              - np.array([n for n, _ in held]), 0)
            precs = [int(p) for _, p in held]
            extra = int((need * store.device_block_bytes[precs]).sum())
            if not extra or extra <= self._free_bytes():  # (a shrink may leave it < 0)
                for rid, n in zip(rids.tolist(), need.tolist()):
                    if n:
                        store.reserve(rid, n)
                return
            self.preempt(self._youngest())

    def fit_budget(self) -> None:
        """The device budget shrank (a fault): preempt the most recently admitted running
        requests while what is held and reserved exceeds it."""
        eng = self.engine
        while eng.running and self._free_bytes() < 0:
            rid = self._youngest()
            self.preempt(rid)
            self.stale.add(rid)

    def _youngest(self) -> int:
        """The running request admitted (or resumed) last: vLLM's preemption victim."""
        return max(self.engine.running, key=lambda r: (self._order.get(r, 0), r))

    def _free_bytes(self) -> int:
        store = self.engine.store
        return store.device_budget_bytes - store.device_used_bytes - store.reserved_bytes

    def preempt(self, rid: int) -> None:
        """Take ``rid`` out of the running set to the head of the waiting queue."""
        eng = self.engine
        eng.running.remove(rid)
        self.counts["num_preemptions"] += 1
        if not (self.mode == "swap" and self._swap_out(rid)):
            eng.store.free(rid)
            eng.executor.release(rid)
            eng.planner.forget(rid)
            self.resume_tokens[rid] = int(eng.state.generated[rid])
            self.counts["num_recomputed"] += 1
        eng.waiting.appendleft(rid)
        eng.wake(prefill=True)

    # -- swap --------------------------------------------------------------------------------
    def _swap_out(self, rid: int) -> bool:
        """Move the request's resident blocks to the host tier; False (nothing moved) when the
        host tier has no room for them."""
        store = self.engine.store
        fp16 = int(store.device_block_bytes[Precision.FP16])
        blocks = store.blocks_raw(rid)
        moved = [i for i, p in enumerate(blocks) if Precision(p).is_resident]
        copies = sum(1 for i in moved if not store.has_backup(rid, i))
        if store.host_used_bytes + copies * fp16 > store.host_budget_bytes:
            return False
        original = bytes(blocks)
        for i in moved:
            store.set_precision(rid, i, Precision.OFFLOADED)
        store.release_reservation(rid)
        self.swapped[rid] = (moved, original)
        self._charge(copies * fp16, "swap_out_bytes")
        self.counts["num_swapped"] += 1
        return True

    def _headroom_blocks(self, rid: int) -> int:
        """One block of headroom, unless the request already holds all its total needs."""
        store = self.engine.store
        return int(store.req_blocks[rid] < store.blocks_for(self.engine.total_tokens(rid)))

    def _swap_in_bytes(self, rid: int) -> int:
        """Device bytes the request's blocks take back, plus the headroom."""
        store = self.engine.store
        moved, original = self.swapped[rid]
        dev = store.device_block_bytes
        headroom = self._headroom_blocks(rid) * int(dev[store.reservation(rid)[1]])
        return sum(int(dev[original[i]]) for i in moved) + headroom

    def swap_in(self, rid: int) -> bool:
        """Copy a swapped request's blocks back and let it rejoin the running set; False when
        they do not fit yet (it stays at the head of the queue) or it was not swapped out."""
        eng, store = self.engine, self.engine.store
        if rid not in self.swapped or self._swap_in_bytes(rid) > self._free_bytes():
            return False
        moved, original = self.swapped.pop(rid)
        for i in moved:
            store.set_precision(rid, i, Precision(original[i]))
        store.reserve(rid, self._headroom_blocks(rid))
        self._charge(len(moved) * int(store.device_block_bytes[Precision.FP16]), "swap_in_bytes")
        self._admitted(rid)
        eng.running.append(rid)
        eng.wake(decode=True)
        return True

    def _charge(self, num_bytes: int, counter: str) -> None:
        self.counts[counter] += num_bytes
        self.engine.planner.retierer.pending.copy_bytes += num_bytes  # the next decode step
