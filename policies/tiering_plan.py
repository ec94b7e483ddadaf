"""Steps shared by the per-block tiering policies: blocks grouped by request, block counts from
token counts and fractions, rough byte estimates, and target precisions turned into the ordered
change list of a ``TieringDecision``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from policies.precision import Precision
from policies.tiering import BlockInfo, TieringObservation, TierPressure

BlockKey = tuple[int, int]  # (request_id, block index)
Change = tuple[int, int, Precision]

# Device bytes of a resident block relative to FP16: bits per value / 16.  Group-wise scales are
# left out, so quantized blocks look smaller than they are and ``fp16_block_bytes`` errs high.
_FP16_FRACTION = {
    Precision.FP16: 1.0,
    Precision.INT8: 0.5,
    Precision.INT4: 0.25,
    Precision.INT2: 0.125,
}


def key(block: BlockInfo) -> BlockKey:
    return block.request_id, block.index


def blocks_for_tokens(num_tokens: int, block_tokens: int) -> int:
    """Blocks that hold the newest ``num_tokens`` tokens: ceil(num_tokens / block_tokens)."""
    if num_tokens <= 0:
        return 0
    return -(-num_tokens // max(block_tokens, 1))


def count_of(frac: float, num: int) -> int:
    """ceil(frac * num), clamped to [0, num]; rounded first so that float noise does not make
    0.1 * 30 = 3.0000000000000004 into 4."""
    return max(0, min(num, math.ceil(round(frac * num, 9))))


def by_request(blocks: Iterable[BlockInfo]) -> dict[int, list[BlockInfo]]:
    """Blocks per request, each list ordered by block index (oldest first)."""
    out: dict[int, list[BlockInfo]] = {}
    for b in blocks:
        out.setdefault(b.request_id, []).append(b)
    for req in out.values():
        req.sort(key=lambda b: b.index)
    return out


def lowered(current: Precision, target: Precision) -> Precision:
    """``target`` if it is less precise than ``current``, else ``current``: a demotion-only step.
    A larger ``Precision`` value is never more precise."""
    return Precision(max(current, target))


def device_tier(obs: TieringObservation) -> TierPressure | None:
    return next((p for p in obs.pressures if p.tier == "device"), None)


def fp16_block_bytes(obs: TieringObservation) -> float:
    """An estimate, erring high, of one FP16 block's device bytes: the device tier's used bytes
    over the resident blocks counted in FP16 equivalents.  It errs high because quantized blocks'
    scales are left out and the engine's used bytes may include reservations for future blocks.
    0 when the observation names no device tier (nothing to budget against); the device's whole
    capacity when no block is resident (nothing to measure by: assume the worst)."""
    tier = device_tier(obs)
    if tier is None:
        return 0.0
    fp16_equiv = sum(_FP16_FRACTION.get(b.precision, 0.0) for b in obs.blocks)
    if fp16_equiv <= 0.0:
        return float(tier.capacity_bytes)
    return tier.used_bytes / fp16_equiv


def raise_to_fp16_bytes(precision: Precision, fp16_bytes: float) -> float:
    """Device bytes added by raising a block of ``precision`` to FP16 (estimate)."""
    return fp16_bytes * (1.0 - _FP16_FRACTION.get(precision, 0.0))


def _move_order(old: Precision, new: Precision) -> int:
    """0: a block leaves the device (offload, evict); 1: it is re-quantized lower; 2: raised."""
    if new < old:
        return 2
    return 1 if new.is_resident else 0


def changes_to(
    blocks: Sequence[BlockInfo], target: Mapping[BlockKey, Precision]
) -> tuple[Change, ...]:
    """The changes that bring every block named in ``target`` to its target precision; blocks it
    does not name, and blocks already there, are left out.

    Order, for an engine that applies changes one by one against its memory budgets: blocks
    leaving the device first (offloads claim the host tier before the best-effort FP16 backups
    of re-quantized blocks can fill it), then re-quantizations, then raises (which need the
    device memory the others free); each group in (request, index) order, so the result does
    not depend on the order of ``blocks``."""
    current = {key(b): b.precision for b in blocks}
    out = [
        (b.request_id, b.index, Precision(target[key(b)]))
        for b in blocks
        if key(b) in target and target[key(b)] != b.precision
    ]
    out.sort(key=lambda c: (_move_order(current[(c[0], c[1])], c[2]), c[0], c[1]))
    return tuple(out)
