"""The paged KV store: blocks of ``block_tokens`` tokens per request, a precision per block, and a
memory budget for the device tier (where attention runs) and the host tier (offloaded blocks).

Admission reserves a request's whole future: its prompt blocks are allocated and the blocks its
output will fill are reserved at the precision new blocks are written at when it is admitted, so a
running request can always grow and the device budget is never exceeded (no preemption).  A later
tiering decision can lower the precision of a request's future blocks, never raise it past that
reservation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

import numpy as np

from policies import Precision
from sim.engine.kv_layout import BlockLayout, KVLayout

NUM_PRECISIONS = len(Precision)
_RESIDENT = frozenset(p for p in Precision if p.is_resident)
_PRECISIONS = tuple(Precision)  # by value


class Move(enum.Enum):
    """What a precision change costs, for the executor to charge."""

    REQUANTIZE = "requantize"  # on the device: read, quantize, write
    REQUANTIZE_BACKUP = "requantize+backup"  # and copy the FP16 original to the host tier
    OFFLOAD = "offload"  # copy to the host tier
    OFFLOAD_FROM_BACKUP = "offload-from-backup"  # the host copy exists already: free the device
    EVICT = "evict"
    RESTORE_COPY = "restore-copy"  # copy the FP16 original back from the host tier
    RECOMPUTE = "recompute"  # no original anywhere: recompute K/V from the token ids


class Admission(enum.Enum):
    OK = "ok"
    LATER = "later"  # fits once running requests free their memory
    NEVER = "never"  # larger than the whole budget


def block_bytes(values_per_token: int, block_tokens: int, group: int) -> dict[Precision, int]:
    """Device bytes of one block by precision.  INT8/INT4/INT2 are asymmetric group-wise: an FP16
    scale and an FP16 zero point per ``group`` values, i.e. b + 32/group bits per value (group 64:
    8.5, 4.5 and 2.5 bits; 4.5 is the q4_0-style budget of
    docs/hardware.md#kv-quantisation-budget)."""
    values = values_per_token * block_tokens
    scales = -(-values // group) * 4  # an FP16 scale + an FP16 zero point per group
    return {
        Precision.FP16: values * 2,
        Precision.INT8: values + scales,
        Precision.INT4: -(-values // 2) + scales,
        Precision.INT2: -(-values // 4) + scales,
        Precision.OFFLOADED: 0,
        Precision.EVICTED: 0,
    }


class PagedKVStore:
    """Contract: ``device_used_bytes + reserved_bytes <= device_budget_bytes`` and
    ``host_used_bytes <= host_budget_bytes`` after every call; a call that would break either
    raises ``MemoryError`` and changes nothing.  ``free`` of an admitted request is always safe.
    The one exception is ``set_device_budget`` (an injected fault), which may leave the device
    tier over its budget until requests are freed.

    Request ids are small integers below ``capacity`` (the engine's request index), which lets the
    per-request token counts and block counts by precision live in numpy arrays: a decode step
    updates a whole batch with a few vector operations.

    ``layout`` (``sim.engine.kv_layout``) says how the memory held is counted: whole blocks
    (default) or as the torch executor holds it.
    """

    def __init__(self, block_tokens: int, bytes_by_precision: Mapping[Precision, int],
                 device_budget_bytes: float, host_budget_bytes: float, capacity: int,
                 layout: Callable[[PagedKVStore], KVLayout] = BlockLayout):
        self.block_tokens = block_tokens
        self.device_block_bytes = np.array([bytes_by_precision[p] for p in Precision],
                                           dtype=np.int64)
        self.host_block_bytes = np.zeros(NUM_PRECISIONS, dtype=np.int64)
        self.host_block_bytes[Precision.OFFLOADED] = bytes_by_precision[Precision.FP16]
        self._device_list = self.device_block_bytes.tolist()
        self._host_list = self.host_block_bytes.tolist()
        self.device_budget_bytes = int(device_budget_bytes)
        self.host_budget_bytes = int(host_budget_bytes)
        self.counts = np.zeros(NUM_PRECISIONS, dtype=np.int64)  # blocks by precision, all requests
        self.num_blocks = 0  # = counts.sum()
        self.req_counts = np.zeros((capacity, NUM_PRECISIONS), dtype=np.int64)
        self.req_tokens = np.zeros(capacity, dtype=np.int64)
        self.req_blocks = np.zeros(capacity, dtype=np.int64)  # = req_counts.sum(axis=1)
        self.reserved_bytes = 0
        self.device_used_bytes = 0
        self.host_used_bytes = 0
        self._blocks: dict[int, bytearray] = {}  # request id -> precision of each block
        self._backups: dict[int, bytearray] = {}  # request id -> 1 where an FP16 copy is kept
        self.num_backups = 0
        self._future: dict[int, tuple[int, Precision]] = {}  # reserved blocks and their precision
        self.layout = layout(self)

    # -- admission ---------------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def can_admit(self, max_tokens: int, precision: Precision) -> Admission:
        need = self.blocks_for(max_tokens) * int(self.device_block_bytes[precision])
        if need > self.device_budget_bytes:
            return Admission.NEVER
        if self.device_used_bytes + self.reserved_bytes + need > self.device_budget_bytes:
            return Admission.LATER
        return Admission.OK

    def admit(self, rid: int, prompt_tokens: int, max_tokens: int, precision: Precision) -> None:
        """Allocate the prompt's blocks and reserve the rest of ``max_tokens``."""
        if rid in self._blocks:
            raise ValueError(f"request {rid} already admitted")
        if self.can_admit(max(max_tokens, prompt_tokens), precision) is not Admission.OK:
            raise MemoryError(f"request {rid} does not fit")
        total = self.blocks_for(max(max_tokens, prompt_tokens))
        now = self.blocks_for(prompt_tokens)
        self._blocks[rid] = bytearray()
        self._backups[rid] = bytearray()
        self.layout.admitted(rid)
        self._future[rid] = (total, precision)
        self.reserved_bytes += total * int(self.device_block_bytes[precision])
        self.append_tokens(rid, prompt_tokens, precision)
        assert len(self._blocks[rid]) == now

    def reserve(self, rid: int, blocks: int) -> None:
        """Reserve ``blocks`` more blocks for an admitted request (at its reserved precision),
        for the growth of its next step (preemption: admission reserves little up front)."""
        future, prec = self._future[rid]
        extra = blocks * int(self.device_block_bytes[prec])
        if extra and self.device_used_bytes + self.reserved_bytes + extra > \
                self.device_budget_bytes:
            raise MemoryError(f"request {rid}: no device memory for {blocks} more blocks")
        self._future[rid] = (future + blocks, prec)
        self.reserved_bytes += extra

    def release_reservation(self, rid: int) -> None:
        """Give back what ``rid`` has reserved and not used (a request swapped out)."""
        future, prec = self._future[rid]
        self.reserved_bytes -= future * int(self.device_block_bytes[prec])
        self._future[rid] = (0, prec)

    def reservation(self, rid: int) -> tuple[int, Precision]:
        """The blocks ``rid`` has reserved and not used, and their precision."""
        future, prec = self._future[rid]
        return future, Precision(prec)

    def set_device_budget(self, budget_bytes: int) -> None:
        """A new device budget (an injected fault).  A smaller one may leave what is held and
        reserved above it: moves that free device memory and growth within reservations still
        work, anything else raises until the caller has freed enough (``free``)."""
        self.device_budget_bytes = int(budget_bytes)

    # -- growth ------------------------------------------------------------------------------
    def growth_bytes(self, rids: np.ndarray, num_tokens: np.ndarray,
                     precision: Precision) -> np.ndarray:
        """Per request, the device bytes of the new blocks ``num_tokens`` more tokens would
        allocate (at the precision ``append_tokens_many`` writes them at)."""
        tokens = self.req_tokens[rids] + num_tokens
        need = np.maximum((tokens + (self.block_tokens - 1)) // self.block_tokens
                          - self.req_blocks[rids], 0)
        reserve = np.array([self._future[int(r)][1] for r in rids], dtype=np.int64)
        precs = np.maximum(reserve, int(precision))
        return need * self.device_block_bytes[precs]

    def append_tokens(self, rid: int, num_tokens: int, precision: Precision) -> int:
        """Add tokens to one request; returns the number of new blocks."""
        if precision not in _RESIDENT:
            raise ValueError(f"new blocks must be resident, not {Precision(precision).name}")
        tokens = int(self.req_tokens[rid]) + num_tokens
        added = self._grow([rid], [tokens], int(precision)) \
            if tokens > int(self.req_blocks[rid]) * self.block_tokens else 0
        self.req_tokens[rid] = tokens
        return added

    def append_tokens_many(self, rids: np.ndarray, num_tokens: np.ndarray,
                           precision: Precision) -> int:
        """Add ``num_tokens[i]`` tokens to request ``rids[i]`` (ids distinct; a repeated id that
        fills a block raises ``ValueError``).  New blocks are written at ``precision`` (a
        resident one), or at a request's reserved precision when that is lower.  The engine's
        hot path: the token counts in a few vector operations, the few requests that fill a
        block (one in ``block_tokens`` a decode step) in plain Python."""
        if precision not in _RESIDENT:
            raise ValueError(f"new blocks must be resident, not {Precision(precision).name}")
        tokens = self.req_tokens[rids] + num_tokens
        grow = (tokens > self.req_blocks[rids] * self.block_tokens).nonzero()[0]
        added = self._grow(rids[grow].tolist(), tokens[grow].tolist(), int(precision)) \
            if len(grow) else 0
        self.req_tokens[rids] = tokens
        return added

    def _grow(self, rids: list[int], tokens: list[int], precision: int) -> int:
        """Grow ``rids[i]`` (distinct) to ``tokens[i]`` tokens, appending the blocks that takes and
        drawing on their reservations; returns the blocks added.  Checked first, over all of
        them, so that a failure (growth past the reservations and the budget) changes nothing."""
        if len(set(rids)) != len(rids):
            raise ValueError("append_tokens_many: a request id appears twice")
        bt, dev, futures, held = self.block_tokens, self._device_list, self._future, self._blocks
        grows = []
        extra = 0
        for rid, total in zip(rids, tokens):
            new = -(-total // bt) - len(held[rid])  # (len: req_blocks[rid])
            future, reserve_prec = futures[rid]
            prec = precision if precision > reserve_prec else int(reserve_prec)
            if new > future:
                extra += (new - future) * dev[prec]
            grows.append((rid, new, future, reserve_prec, prec))
        if extra and (self.device_used_bytes + self.reserved_bytes + extra
                      > self.device_budget_bytes):
            raise MemoryError("requests grew past their reservations and the budget")
        by_prec: dict[int, int] = {}
        released = 0
        req_counts, req_blocks, backups = self.req_counts, self.req_blocks, self._backups
        for rid, new, future, reserve_prec, prec in grows:
            take = new if new < future else future
            released += take * dev[reserve_prec]
            futures[rid] = (future - take, reserve_prec)
            held[rid].extend(bytes((prec,)) * new)
            backups[rid].extend(bytes(new))
            req_counts[rid, prec] += new
            req_blocks[rid] += new
            by_prec[prec] = by_prec.get(prec, 0) + new
        self.reserved_bytes -= released
        host = self._host_list
        added = 0
        for prec, n in by_prec.items():
            self.counts[prec] += n
            self.device_used_bytes += n * dev[prec]
            self.host_used_bytes += n * host[prec]
            added += n
        self.num_blocks += added
        return added

    def set_precision(self, rid: int, index: int, precision: Precision,
                      keep_backup: bool = False) -> Move | None:
        """Change one block's precision; returns the move it took (None if unchanged).

        A block demoted from FP16 with ``keep_backup`` keeps an FP16 copy in the host tier when
        the host has room (best effort).  Raising a block copies that original back (or the
        offloaded block); with no original anywhere it must be recomputed.
        """
        blocks, backups = self._blocks[rid], self._backups[rid]
        old, new = _PRECISIONS[blocks[index]], Precision(precision)
        if old == new:
            return None
        dev_bytes, host_bytes = self._device_list, self._host_list
        fp16 = dev_bytes[Precision.FP16]
        had = bool(backups[index])
        if new > old:  # demotion
            if new == Precision.OFFLOADED:
                move, backup = (Move.OFFLOAD_FROM_BACKUP if had else Move.OFFLOAD), False
            elif new == Precision.EVICTED:
                move, backup = Move.EVICT, False
            else:
                backup = had or (keep_backup and old == Precision.FP16)
                move = Move.REQUANTIZE_BACKUP if backup and not had else Move.REQUANTIZE
        else:  # restore
            source = had or old == Precision.OFFLOADED
            move = Move.RESTORE_COPY if source else Move.RECOMPUTE
            backup = had and new != Precision.FP16
        dev = dev_bytes[new] - dev_bytes[old]
        host = host_bytes[new] - host_bytes[old] + fp16 * (int(backup) - int(had))
        if dev > 0 and self.device_used_bytes + self.reserved_bytes + dev > \
                self.device_budget_bytes:
            raise MemoryError(f"block {index} of request {rid}: no device memory for {new.name}")
        if self.host_used_bytes + host > self.host_budget_bytes:
            if move is not Move.REQUANTIZE_BACKUP:
                raise MemoryError(f"block {index} of request {rid}: the host tier is full")
            move, backup, host = Move.REQUANTIZE, False, 0  # no room for the copy: none kept
        blocks[index] = new
        backups[index] = backup
        self.num_backups += int(backup) - int(had)
        self.host_used_bytes += fp16 * (int(backup) - int(had))
        # one block moves from ``old`` to ``new``: the request's blocks stay as many
        self.counts[old] -= 1
        self.counts[new] += 1
        self.req_counts[rid, old] -= 1
        self.req_counts[rid, new] += 1
        self.device_used_bytes += dev
        self.host_used_bytes += host_bytes[new] - host_bytes[old]
        return move

    def has_backup(self, rid: int, index: int) -> bool:
        return bool(self._backups[rid][index])

    def free(self, rid: int) -> None:
        del self._blocks[rid]
        self.layout.freed(rid)
        num_backups = self._backups.pop(rid).count(1)  # (each byte 0 or 1)
        dev, host = self._device_list, self._host_list
        self.num_backups -= num_backups
        self.host_used_bytes -= num_backups * dev[Precision.FP16]
        future, prec = self._future.pop(rid)
        self.reserved_bytes -= future * dev[prec]
        counts = self.req_counts[rid]
        self.counts -= counts
        self.num_blocks -= int(self.req_blocks[rid])
        for p, n in enumerate(counts.tolist()):
            if n:
                self.device_used_bytes -= n * dev[p]
                self.host_used_bytes -= n * host[p]
        self.req_counts[rid] = 0
        self.req_tokens[rid] = 0
        self.req_blocks[rid] = 0

    # -- views -------------------------------------------------------------------------------
    def tokens(self, rid: int) -> int:
        return int(self.req_tokens[rid])

    def blocks(self, rid: int) -> tuple[Precision, ...]:
        return tuple(Precision(b) for b in self._blocks[rid])

    def blocks_raw(self, rid: int) -> bytearray:
        """The request's block precisions as bytes (a view: do not mutate)."""
        return self._blocks[rid]

    def backups_raw(self, rid: int) -> bytearray:
        """1 where the request's block keeps an FP16 copy in the host tier (a view: do not
        mutate)."""
        return self._backups[rid]

    def request_ids(self) -> list[int]:
        return list(self._blocks)

    def __contains__(self, rid: int) -> bool:
        return rid in self._blocks

    @property
    def fp16_equiv_bytes(self) -> int:
        """Bytes of every live block of every request at FP16 (evicted and offloaded included)."""
        return self.num_blocks * self._device_list[Precision.FP16]

    def bytes_by_precision(self) -> dict[str, int]:
        """Bytes held per state, device and host together; FP16 backups under "backup"."""
        per_block = self.device_block_bytes + self.host_block_bytes
        out = {p.name.lower(): int(self.counts[p] * per_block[p]) for p in Precision}
        out["backup"] = self.num_backups * int(self.device_block_bytes[Precision.FP16])
        return out

    def check_integrity(self) -> None:
        counts = np.zeros(NUM_PRECISIONS, dtype=np.int64)
        for rid, blocks in self._blocks.items():
            mine = np.bincount(np.frombuffer(bytes(blocks), dtype=np.uint8),
                               minlength=NUM_PRECISIONS)
            assert len(blocks) == self.blocks_for(int(self.req_tokens[rid])), rid
            assert (mine == self.req_counts[rid]).all(), rid
            assert len(blocks) == self.req_blocks[rid], rid
            counts += mine
        assert (counts == self.counts).all()
        assert self.num_blocks == int(counts.sum())
        self.layout.check()
        backups = sum(sum(b) for b in self._backups.values())
        assert backups == self.num_backups
        assert all(len(self._backups[r]) == len(b) for r, b in self._blocks.items())
        assert self.device_used_bytes == int(counts @ self.device_block_bytes)
        fp16 = int(self.device_block_bytes[Precision.FP16])
        assert self.host_used_bytes == int(counts @ self.host_block_bytes) + backups * fp16
        reserved = sum(f * int(self.device_block_bytes[p]) for f, p in self._future.values())
        assert self.reserved_bytes == reserved
        assert self.device_used_bytes + self.reserved_bytes <= self.device_budget_bytes
        assert self.host_used_bytes <= self.host_budget_bytes
