"""Drives the tiering policy: builds its observation (blocks with attention, access and relevance
from the attention model; tier pressures; the quality signal), validates and applies its decision,
and keeps the cost of the moves for the next step to pay."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from policies import BlockInfo, Precision, TieringObservation, TieringPolicy, TierPressure
from sim.config.policy_registry import observes_blocks
from sim.engine.kv_store import Move, PagedKVStore
from sim.engine.policy_call import ask
from sim.errors import InfeasibleDecision
from sim.quality.attention import AttentionModel
from sim.quality.model import request_delta_ppl


@dataclass
class PendingMoves:
    """Work the moves of a re-tiering pass leave for the next step."""

    copy_bytes: int = 0  # to or from the host tier
    requant_values: int = 0  # K/V values re-quantized on the device
    recompute_tokens: int = 0  # tokens whose K/V are recomputed
    requant_into: list[int] = field(default_factory=lambda: [0, 0, 0])  # INT8, INT4, INT2
    # FP16 bytes a real executor's arena shifts to stay compact (``adapters.kv.paged``): the
    # tokens after the first FP16 block of a request to leave it, once a pass (all its blocks
    # leaving together), and after each block coming back
    shift_bytes: int = 0
    # the FP16 blocks leaving for the host or for good (once a pass: per request and target)
    # and each one coming back: what a real executor does for them besides the shift
    shift_passes: int = 0

    def take(self) -> PendingMoves:
        """What is pending, and nothing is left pending."""
        out = PendingMoves(self.copy_bytes, self.requant_values, self.recompute_tokens,
                           list(self.requant_into), self.shift_bytes, self.shift_passes)
        self.copy_bytes = self.requant_values = self.recompute_tokens = self.shift_bytes = 0
        self.shift_passes = 0
        self.requant_into = [0, 0, 0]
        return out

    def add(self, plan) -> None:
        """Take back the work a step (``StepPlan``) was to pay and did not."""
        self.copy_bytes += plan.kv_copy_bytes
        self.requant_values += plan.kv_requant_values
        self.recompute_tokens += plan.kv_recompute_tokens
        self.requant_into = [a + b for a, b in zip(self.requant_into, plan.kv_requant_into)]
        self.shift_bytes += plan.kv_shift_bytes
        self.shift_passes += plan.kv_shift_passes


_PRECISIONS = tuple(Precision)  # by value


class Retierer:
    def __init__(self, policy: TieringPolicy, attention: AttentionModel, penalty: np.ndarray,
                 values_per_block: int):
        self.policy, self.attention, self.penalty = policy, attention, penalty
        self.values_per_block = values_per_block
        self.new_block_precision = Precision.FP16
        self.pending = PendingMoves()
        self.moves: Counter[str] = Counter()
        self.quality_samples: list[float] = []
        self._last_step = 0

    def retier(self, store: PagedKVStore, running: list[int], step: int) -> None:
        steps = step - self._last_step
        self._last_step = step
        blocks, delta = self._observe(store, running, steps)
        pressures = (
            TierPressure("device", store.device_used_bytes + store.reserved_bytes,
                         store.device_budget_bytes),
            TierPressure("host", store.host_used_bytes, store.host_budget_bytes))
        obs = TieringObservation(blocks, pressures, store.block_tokens, delta, step)
        decision = ask(self.policy, "tiering", obs)
        kind = self.policy.kind
        new = _precision(decision.new_block_precision, kind)
        if not new.is_resident:
            raise InfeasibleDecision(f"tiering policy {kind!r}: new blocks cannot be written "
                                     f"{new.name}")
        self.new_block_precision = new
        fp_moves: dict[int, dict[int, tuple[bool, int]]] = {}  # rid -> block -> (was FP16, to)
        for change in decision.changes:
            try:
                rid, index, precision = change
            except (TypeError, ValueError):
                raise InfeasibleDecision(f"tiering policy {kind!r}: a change is (request_id, "
                                         f"block index, precision), not {change!r}") from None
            if rid not in store or not 0 <= index < store.req_blocks[rid]:
                raise InfeasibleDecision(f"tiering policy {kind!r}: no block {index} of "
                                         f"request {rid}")
            to, was = _precision(precision, kind), store.blocks_raw(rid)[index]
            try:
                move = store.set_precision(rid, index, to, decision.keep_backup)
            except MemoryError as err:
                raise InfeasibleDecision(f"tiering policy {kind!r}: {err}") from None
            if move is not None:
                self._charge(move, store, to)
                first = fp_moves.setdefault(rid, {}).get(index, (was == Precision.FP16, 0))
                fp_moves[rid][index] = (first[0], int(to))
        for rid, moved in fp_moves.items():
            tokens, passes = _shifted_tokens(store, rid, moved)
            self.pending.shift_bytes += tokens * (
                int(store.device_block_bytes[Precision.FP16]) // store.block_tokens)
            self.pending.shift_passes += passes

    def _charge(self, move: Move, store: PagedKVStore, to: Precision) -> None:
        self.moves[move.value] += 1
        fp16 = int(store.device_block_bytes[Precision.FP16])
        if move in (Move.REQUANTIZE, Move.REQUANTIZE_BACKUP):
            self.pending.requant_values += self.values_per_block
            self.pending.requant_into[int(to) - 1] += self.values_per_block
        if move in (Move.REQUANTIZE_BACKUP, Move.OFFLOAD, Move.RESTORE_COPY):
            self.pending.copy_bytes += fp16
        if move is Move.RECOMPUTE:
            self.pending.recompute_tokens += store.block_tokens

    def _observe(self, store: PagedKVStore, running: list[int],
                 steps: int) -> tuple[tuple[BlockInfo, ...], float]:
        """Advance the attention model; build block infos only for a policy that reads them.
        The quality signal is the attention-weighted penalty of the precision mix."""
        mixed = np.count_nonzero(store.counts) > 1
        if not (observes_blocks(self.policy) or mixed):
            present = np.flatnonzero(store.counts)
            delta = float(self.penalty[present[0]]) if len(present) else 0.0
            self.quality_samples.append(delta)
            return (), delta
        infos: list[BlockInfo] = []
        deltas = []
        for rid in running:
            precs = np.frombuffer(bytes(store.blocks_raw(rid)), dtype=np.uint8)
            n = len(precs)
            resident = precs <= Precision.INT2
            shares = self.attention.advance(rid, resident, steps)
            deltas.append(request_delta_ppl(self.attention.shares(rid, n), precs, self.penalty))
            if observes_blocks(self.policy):
                infos.extend(self._infos(rid, precs, shares, store))
        delta = float(np.mean(deltas)) if deltas else 0.0
        self.quality_samples.append(delta)
        return tuple(infos), delta

    def _infos(self, rid: int, precs: np.ndarray, shares: np.ndarray,
               store: PagedKVStore) -> list[BlockInfo]:
        # Age: tokens written since the block filled (one per decode step without speculation).
        # (the arrays as lists first: indexing a list is much faster than indexing an array)
        n, tokens, bt = len(precs), store.tokens(rid), store.block_tokens
        mass = self.attention.mass[rid][:n].tolist()
        access = self.attention.access[rid][:n].tolist()
        relevance, shares = self.attention.relevance(rid, n).tolist(), shares[:n].tolist()
        backups = store.backups_raw(rid)
        return [BlockInfo(rid, i, _PRECISIONS[p], max(tokens - (i + 1) * bt, 0),
                          float(mass[i]), int(access[i]), float(relevance[i]), n - 1 - i,
                          float(shares[i]), bool(backups[i]))
                for i, p in enumerate(precs.tolist())]

    def forget(self, rid: int) -> None:
        self.attention.forget(rid)


def _shifted_tokens(store: PagedKVStore, rid: int,
                    moved: dict[int, tuple[bool, int]]) -> tuple[int, int]:
    """Tokens a real executor's FP16 arena shifts to make these moves of one request's full
    blocks (block -> (was FP16, precision now)), as ``PagedKV.set_precisions`` makes them: by
    target, in the order the targets first appear over the blocks; the FP16 blocks leaving for
    one target in one compaction (the FP16 blocks and partial block after the first of them
    shift), each block coming back to FP16 on its own (those after it shift).  -> (tokens,
    passes: the compactions for a tier that is not quantized, and the blocks coming back; a
    quantizing pass's own cost is its first block's price)."""
    bt, tokens = store.block_tokens, store.tokens(rid)
    full = tokens // bt
    tail = tokens - full * bt
    arena = np.frombuffer(bytes(store.blocks_raw(rid)), dtype=np.uint8)[:full] == 0  # FP16 now
    order = sorted(b for b in moved if b < full)
    for b in order:
        arena[b] = moved[b][0]  # as before the moves
    shifted = passes = 0
    for target in dict.fromkeys(moved[b][1] for b in order):
        group = [b for b in order if moved[b][1] == target]
        if target == Precision.FP16:
            for b in group:
                if not arena[b]:
                    shifted += int(arena[b + 1:].sum()) * bt + tail
                    arena[b] = True
                    passes += 1
            continue
        leaving = [b for b in group if arena[b]]
        if leaving:
            arena[leaving] = False
            shifted += int(arena[leaving[0] + 1:].sum()) * bt + tail
            passes += not Precision(target).is_resident
    return shifted, passes


def _precision(value, kind: str) -> Precision:
    try:
        return Precision(value)
    except (ValueError, TypeError):
        raise InfeasibleDecision(f"tiering policy {kind!r}: {value!r} is not a precision "
                                 f"({', '.join(p.name for p in Precision)})") from None
