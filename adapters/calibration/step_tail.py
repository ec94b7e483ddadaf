"""What a calibration times around a step's forward (``adapters.calibration.bench``'s bench):
the executor's tier checks and n-gram lookups, read from whole decode steps run through its own
``execute``, fitted into the profile's ``retier_*`` and ``draft_ngram_*`` prices."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import numpy as np
import simpy  # the executor's protocol runs a step as a SimPy process

from adapters.calibration.bench import StepBench
from adapters.decoding.drafting import NgramDraft
from policies import Precision
from policies.scheduling import Placement
from sim.costs.calibration_fit import fit_relative
from sim.engine.executor import StepPlan, StepResult

QUANTIZED_TIMED = (Precision.INT8, Precision.INT4, Precision.INT2)


def step_tail_costs(sb: StepBench, repeats: int = 21) -> dict[str, tuple[float, ...]]:
    """What a measured step does around its forward, read from the segments of whole decode
    steps run through the executor's own ``execute`` (the glue, the order and the cache
    state a measured run has): the warm tier check before the forward and the one right
    after it (a hot loop of checks runs ~20x faster than one after a forward has streamed
    the weights), over 1-4 rows of 512 tokens; the n-gram lookups of a speculative step
    over 1 and 2 rows: of ~200 or ~2,000 tokens in which nothing recurs (every token
    examined: the cost per token), rows whose last three tokens recur just before them
    (a match at once: the cost per lookup and per hit), and ~200 tokens with a slice to
    compare at every fourth start (per compare; ``ngram_prices``).  Contexts stay within the
    model's limit.
    The check after the forward is timed again with the forward measuring attention (an
    observing policy's steps), which runs Python between the two, and read from the speculative
    steps (after a verify pass and its acceptance loop: measured 2026-12-05, 83-88 µs over two
    rows where a decode step's check took 92-94).
    -> ``{"retier": (per check, per row, multi-row step), "retier_warm": (...),
    "retier_observed": (...), "retier_verify": (one row, each next row), "ngram": (first call,
    each next call, per token examined, per slice compared, per row that found one)}``."""
    cap = sb.spec.max_context_tokens - 64  # room for the tokens the steps add
    typical = max(min(8 * sb.bt, cap), 2 * sb.bt)  # a typical context, in full blocks
    checks = [sb.fill(typical // sb.bt * sb.bt, Precision.FP16) for _ in range(4)]
    long = max(min(2000, cap), 16)
    short = long // 10
    # rows whose lookups scan everything (short, long), find a match at once ("hit": the
    # last three tokens recur just before), or scan a short row comparing a slice at every
    # fourth start ("compare": the 3-gram's first token planted there); each lookup runs over
    # its row's fixed list
    kinds = (short, long, "hit", "compare")
    drafting = {n: [sb.fill(n if n == long else short, Precision.FP16) for _ in range(2)]
                for n in kinds}
    texts = {rid: list(sb.ex.tokens[rid]) for rows in drafting.values() for rid in rows}
    for rid in drafting["hit"]:
        texts[rid][-6:] = texts[rid][-3:] * 2
    for rid in drafting["compare"]:
        texts[rid][:-4:4] = [texts[rid][-3]] * len(texts[rid][:-4:4])
    rids = [*checks, *texts]
    raw = {rid: bytes(64) for rid in rids}  # every block FP16, as it already is
    saved = sb.ex.store, sb.ex.drafter
    sb.ex.store = _store(sb.bt, raw.__getitem__)
    sb.ex.drafter = NgramDraft()
    for rid in rids:
        sb.ex._actual[rid] = np.zeros(sb.kv.num_tokens(rid) // sb.bt, np.uint8)

    cold: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    warm: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    observed: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    lookups: dict[tuple, list[tuple[float, ...]]] = {(n, b): [] for n in kinds for b in (1, 2)}
    after_verify: dict[int, list[float]] = {1: [], 2: []}
    try:
        for rep in range(repeats):
            for n in cold:
                ret = _retier_segments(_decode_step(sb, checks[:n]))
                warm[n].append(ret[0])
                cold[n].append(ret[-1])
            sb.observing(True)  # the forward measures attention, as for an observing policy
            for n in observed:
                observed[n].append(_retier_segments(_decode_step(sb, checks[:n]))[-1])
            sb.observing(False)
            for b in (1, 2):
                for n in (kinds[rep % 4], kinds[(rep + 2) % 4]):  # each in half the repeats
                    for rid in drafting[n]:
                        sb.ex.tokens[rid] = list(texts[rid])
                    result = _decode_step(sb, drafting[n][:b], 4)
                    seconds = sum(s for _, kind, s in result.segments if kind == "draft")
                    lookups[n, b].append((seconds, result.draft_scan_tokens,
                                          result.draft_compares, result.draft_hits))
                    after_verify[b].append(_retier_segments(result)[-1])
    finally:
        sb.ex.store, sb.ex.drafter = saved
        for rid in rids:
            sb.ex._actual.pop(rid, None)
    sb.release(rids)
    one, two = (statistics.median(after_verify[b]) for b in (1, 2))
    return {"retier": _per_check_and_row(cold), "retier_warm": _per_check_and_row(warm),
            "retier_observed": _per_check_and_row(observed),
            "retier_verify": (one, max(two - one, 0.0)), "ngram": ngram_prices(lookups)}


def ngram_prices(lookups: dict[tuple, list[tuple[float, ...]]]) -> tuple[float, ...]:
    """The lookups' medians per (row kind, rows) -> seconds (a step's first lookup, each next
    one, per token examined, per slice compared, per row that found an n-gram): non-negative
    least squares on relative error over the medians.  Measured 2026-12-05 (one-row lookups
    over Shakespeare, SmolLM2's tokens): time against tokens examined alone missed by 8.8 % at
    the median, with the compares and whether an n-gram was found 3.8 %."""
    rows, seconds = [], []
    for (_, b), v in lookups.items():
        if v:
            med = [statistics.median(float(x[i] or 0) for x in v) for i in range(4)]
            rows.append([1.0, b - 1.0, *med[1:]])
            seconds.append(max(med[0], 1e-9))
    first, nxt, per_token, per_compare, per_hit = fit_relative(np.array(rows), np.array(seconds))
    return first, nxt, per_token, per_compare, per_hit


def growth_in_prefills(sb: StepBench, repeats: int = 7) -> dict[bool, tuple[float, float]]:
    """What the tier check after a forward pays when a row's full blocks grew (the executor's
    record of the row's blocks grows with them), without and with attention measured: prefill
    steps through ``execute`` of 1 and 2 prompts of half a block (no full block) and of a block
    and a half (one), ``repeats`` times, interleaved.  Measured 2026-12-05 (torch, 64-token
    blocks): 63-token prompts' check 64 µs, 64-token ones' 84 µs, 128-512 tokens' 85-108: by
    the row, not by the block.  -> ``{observed: (the first grown row, each next one)}``."""
    if sb.bt < 2:  # every prompt fills a block: nothing to tell apart
        return {False: (0.0, 0.0), True: (0.0, 0.0)}
    cap = sb.spec.max_context_tokens - 64
    lengths = (sb.bt // 2, min(sb.bt + sb.bt // 2, cap))
    times: dict[tuple[bool, int, int], list[float]] = {}
    saved = sb.ex.store
    sb.ex.store = _store(sb.bt, lambda rid: bytes(sb.kv.num_tokens(rid) // sb.bt + 1))
    try:
        for _ in range(repeats):
            for obs in (False, True):
                sb.observing(obs)
                for tokens in lengths:
                    for b in (1, 2):
                        rids = list(range(sb.next_rid, sb.next_rid + b))
                        sb.next_rid += b
                        sb.ex.prompts = {rid: sb._ids(tokens) for rid in rids}
                        after = _retier_segments(_prefill_step(sb, rids))[-1]
                        times.setdefault((obs, tokens, b), []).append(after)
                        for rid in rids:
                            sb.ex._actual.pop(rid, None)
                        sb.release(rids)
                sb.observing(False)
    finally:
        sb.ex.store = saved
    short, long = lengths
    out = {}
    for obs in (False, True):
        med = {(t, b): statistics.median(times[obs, t, b]) for t in lengths for b in (1, 2)}
        first = max(med[long, 1] - med[short, 1], 0.0)
        out[obs] = first, max(med[long, 2] - med[short, 2] - first, 0.0)
    return out


def _per_check_and_row(times: dict[int, list[float]]) -> tuple[float, float, float]:
    """Median seconds of checks over 1-4 rows -> (per check, per row, the step up from one row
    to more): the slope over 2-4 rows, and what 2 rows cost beyond 1 row and that slope."""
    med = {n: statistics.median(v) for n, v in times.items()}
    per_row = max(float(np.polyfit([2, 3, 4], [med[2], med[3], med[4]], 1)[0]), 0.0)
    multi = max(med[2] - med[1] - per_row, 0.0)
    return max(med[1] - per_row, 0.0), per_row, multi


def quantize_in_steps(sb: StepBench, check_s: float, repeats: int = 7
                      ) -> dict[str, list[float]]:
    """Seconds a value to quantize, per precision, as whole steps run through the executor's
    own ``execute`` do it: a decode step whose stored token fills a block held below FP16,
    quantized by the tier check right after the forward (``check_s``, that check's own cost
    over one row, taken off), ``repeats`` times: the price of a check's first block.  The
    blocks after it in one check (a prompt's, a re-tiering pass's) are priced from
    ``requant_in_steps``, not from a prefill (seconds each).  -> ``{"int8": [per value, ...],
    ...}``."""
    values = sb.spec.kv_values_per_token * sb.bt
    blocks = max(min(8, (sb.spec.max_context_tokens - 64) // sb.bt), 2)
    saved = sb.ex.store
    out: dict[str, list[float]] = {}
    try:
        for prec in QUANTIZED_TIMED:
            rid = sb.fill(blocks * sb.bt - 1, Precision.FP16)
            raw = bytes([0] * (blocks - 1) + [int(prec)])  # the block the step fills at prec
            sb.ex.store = _store(sb.bt, lambda _, r=raw: r)
            sb.ex._actual[rid] = np.zeros(blocks - 1, np.uint8)
            per = out[prec.name.lower()] = []
            for _ in range(repeats):
                after = _retier_segments(_decode_step(sb, [rid]))[-1]
                per.append(max(after - check_s, 0.0) / values)
                sb.kv.set_precision(rid, blocks - 1, Precision.FP16)  # undo: FP again, and
                sb.kv.truncate(rid, blocks * sb.bt - 1)  # the token the step stored removed
                del sb.ex.tokens[rid][-1]
                sb.ex._actual[rid] = sb.ex._actual[rid][:blocks - 1]
            sb.ex._actual.pop(rid)
            sb.release([rid])
    finally:
        sb.ex.store = saved
    return out


def requant_in_steps(sb: StepBench, check_s: float, shift_bytes_per_s: float,
                     repeats: int = 7) -> dict[str, list[float]]:
    """Seconds a value to quantize, per precision, for each block after the first of one pass:
    a decode step through ``execute`` whose tier check before the forward demotes a row's 8
    full FP16 blocks at once (``check_s``, that check's own cost over one row, and the shift of
    the row's tail, at ``shift_bytes_per_s``, taken off), ``repeats`` times; -> ``{"int8":
    [seconds of the pass, ...], ...}`` with the blocks' values in ``"values"``.  Measured
    (2026-12-05): a pass of 14 blocks to INT8 took 1.0 ms a block where a fill took 1.8, and
    kivi's 2-6 block passes 0.7x a fill each after the first: a step's first quantizing pays
    what the next ones do not."""
    blocks = max(min(8, (sb.spec.max_context_tokens - 128) // sb.bt), 2)
    tokens = blocks * sb.bt + 10
    rid = sb.fill(tokens, Precision.FP16)
    saved_kv = sb.kv.requests[rid].arena[:, :, :, :blocks * sb.bt].clone()
    original = {b: saved_kv[:, :, :, b * sb.bt:(b + 1) * sb.bt] for b in range(blocks)}
    tail_s = 10 * sb.kv.token_bytes() / shift_bytes_per_s
    saved = sb.ex.store
    out: dict[str, list[float]] = {"values": [float(blocks * sb.spec.kv_values_per_token
                                                      * sb.bt)]}
    try:
        for prec in QUANTIZED_TIMED:
            raw = bytes([int(prec)] * blocks + [0])
            sb.ex.store = _store(sb.bt, lambda _, r=raw: r)
            per = out[prec.name.lower()] = []
            for _ in range(repeats):
                sb.ex._actual[rid] = np.zeros(blocks, np.uint8)
                before = _retier_segments(_decode_step(sb, [rid]))[0]
                per.append(max(before - check_s - tail_s, 1e-9))
                sb.kv.set_precisions(rid, list(range(blocks)), [0] * blocks,  # undo: FP16
                                     lambda _, b: original[b])  # again, exactly as it was,
                sb.kv.truncate(rid, tokens)  # the token the step stored removed
                del sb.ex.tokens[rid][-1]
    finally:
        sb.ex.store = saved
        sb.ex._actual.pop(rid, None)
    sb.release([rid])
    return out


def pass_prices_in_steps(sb: StepBench, check_s: float, shift_bytes_per_s: float,
                         fill_s_per_value: dict[str, float]) -> dict[str, float]:
    """Seconds a value for each block after the first one tier check quantizes, per precision:
    from a pass of n blocks (``requant_in_steps``, medians) less one block at a fill's price
    (``fill_s_per_value``), over the n - 1 others; within [0, a fill's price]."""
    timed = requant_in_steps(sb, check_s, shift_bytes_per_s)
    values = timed.pop("values")[0]
    n = round(values / (sb.spec.kv_values_per_token * sb.bt))
    out = {}
    for prec, seconds in timed.items():
        fill = fill_s_per_value[prec]
        rest = (statistics.median(seconds) - fill * values / n) / (values / n * (n - 1))
        out[prec] = min(max(rest, 0.0), fill)
    return out


def shift_in_steps(sb: StepBench, check_s: float, repeats: int = 7) -> tuple[float, float]:
    """Bytes a second the executor's arena shifts to stay compact, and seconds an eviction
    pass costs besides, as a whole decode step through ``execute`` does it: one block of a row
    of 8 FP16 blocks and 10 tokens evicted by the tier check before the forward (``check_s``,
    that check's own cost over one row, taken off), the tokens after it shifted down; the
    first block (7 blocks and 10 tokens shifted) and the sixth (2 and 10), a line through the
    two medians (measured 2026-12-05: 10.6 MB in 0.59 ms, 3.2 MB in 0.27-0.28: 23 GB/s and
    0.14 ms a pass).  -> (bytes a second, seconds a pass)."""
    blocks = max(min(8, (sb.spec.max_context_tokens - 128) // sb.bt), 2)
    tokens = blocks * sb.bt + 10
    rid = sb.fill(tokens, Precision.FP16)
    saved = sb.ex.store
    points = []  # (bytes shifted, median seconds)
    try:
        for evict in dict.fromkeys((0, max(blocks - 3, 1))):
            raw = bytes([int(Precision.EVICTED) if b == evict else 0 for b in range(blocks + 1)])
            sb.ex.store = _store(sb.bt, lambda _, r=raw: r)
            s, e = evict * sb.bt, (evict + 1) * sb.bt
            kv = sb.kv.requests[rid].arena[:, :, :, s:e].clone()  # the block, to put back
            seconds = []
            for _ in range(repeats):
                sb.ex._actual[rid] = np.zeros(blocks, np.uint8)
                before = _retier_segments(_decode_step(sb, [rid]))[0]
                seconds.append(max(before - check_s, 1e-9))
                sb.kv.set_precision(rid, evict, Precision.FP16, lambda *_, k=kv: k)  # undo:
                sb.kv.truncate(rid, tokens)  # the block back, the token the step stored removed
                del sb.ex.tokens[rid][-1]
            points.append(((tokens - e) * sb.kv.token_bytes(), statistics.median(seconds)))
    finally:
        sb.ex.store = saved
        sb.ex._actual.pop(rid, None)
    sb.release([rid])
    (big, t_big), (small, t_small) = points[0], points[-1]
    if big > small and t_big > t_small:
        rate = (big - small) / (t_big - t_small)
        return rate, max(t_small - small / rate, 0.0)
    return big / t_big, 0.0  # one size, or a noisy pair: all of it by the byte, as before


def _store(bt: int, blocks_raw) -> SimpleNamespace:
    """What the executor reads of the engine's store: each request's block precisions
    (``blocks_raw``), no FP16 backups, and nothing reserved (segments sized as they fill)."""
    return SimpleNamespace(block_tokens=bt, blocks_raw=blocks_raw,
                           backups_raw=lambda rid: bytes(len(blocks_raw(rid))),
                           reservation=lambda rid: (0, Precision.FP16))


def _decode_step(sb: StepBench, rows: list[int], k: int = 0) -> StepResult:
    """One decode step of ``rows`` (``k`` draft tokens each) through the executor's ``execute``."""
    name = sb.ex.info.name
    return _execute(sb, StepPlan(phase="decode", request_ids=tuple(rows),
                                 num_tokens=len(rows) * (k + 1), num_rows=len(rows) * (k + 1),
                                 attended_pairs=0.0, kv_read_bytes=0.0, kv_dequant_values=0.0,
                                 placement=Placement(name, name, name), draft_len=k))


def _prefill_step(sb: StepBench, rows: list[int]) -> StepResult:
    """One prefill step of ``rows`` (their prompts in ``sb.ex.prompts``) through ``execute``."""
    name = sb.ex.info.name
    return _execute(sb, StepPlan(phase="prefill", request_ids=tuple(rows), num_tokens=0,
                                 num_rows=len(rows), attended_pairs=0.0, kv_read_bytes=0.0,
                                 kv_dequant_values=0.0, placement=Placement(name, name, name)))


def _execute(sb: StepBench, plan: StepPlan) -> StepResult:
    """``plan`` run through the executor's ``execute``, as the engine runs a step."""
    env = simpy.Environment()
    proc = env.process(sb.ex.execute(env, plan))
    env.run()
    return proc.value


def _retier_segments(result: StepResult) -> list[float]:
    """The seconds of a step's ``retier`` segments: the check before the forward, the one after."""
    return [s for _, kind, s in result.segments if kind == "retier"]
