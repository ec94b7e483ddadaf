"""How the calibrated model prices the work a step does besides its forward, as the executor
pays it: the tier check's step up past one row, a block quantized in the step that stores its
last token, a re-quantizing at the precision it goes to, a check's first block as a fill and the
next as a pass, and an eviction pass besides its bytes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_the_tier_check_fit_recovers_a_step_up_from_one_row_to_more():
    """Checks cost a base, a cost per row, and a step up once there is more than one row (as
    measured runs show: ~50 µs at 1 row, ~80 at 2): the fit recovers all three, medians of noisy
    samples."""
    from adapters.calibration.step_tail import _per_check_and_row

    rng = np.random.default_rng(0)
    truth = {n: 40e-6 + 5e-6 * n + (20e-6 if n > 1 else 0.0) for n in (1, 2, 3, 4)}
    times = {n: list(t + rng.normal(0, 0.2e-6, 21)) for n, t in truth.items()}
    base, per_row, multi = _per_check_and_row(times)
    assert base == pytest.approx(40e-6, abs=1e-6)
    assert per_row == pytest.approx(5e-6, abs=0.5e-6)
    assert multi == pytest.approx(20e-6, abs=1e-6)


def test_the_lookup_fit_recovers_its_five_prices_from_the_calibrations_row_kinds():
    """n-gram lookups cost a first call, each next row's call, a price per token examined, per
    slice compared and per row that found an n-gram (measured: the compares and hits took a
    one-row lookup's median error from 8.8 to 3.8 %).  The calibration's four row kinds (short
    and long misses, an immediate hit, a short miss comparing a slice at every fourth start),
    over 1 and 2 rows, with the counts such rows give and noisy times: the fit recovers all
    five."""
    from adapters.calibration.step_tail import ngram_prices

    truth = (6e-6, 1.5e-6, 0.022e-6, 0.1e-6, 2e-6)
    rng = np.random.default_rng(1)
    counts = {"short": (597, 2, 0), "long": (5997, 12, 0), "hit": (1, 1, 1),
              "compare": (597, 50, 0)}
    lookups = {}
    for kind, (scan, compares, hits) in counts.items():
        for b in (1, 2):
            work = (scan * b, compares * b, hits * b)
            t = truth[0] + (b - 1) * truth[1] + np.dot(truth[2:], work)
            lookups[kind, b] = [(t * (1 + rng.normal(0, 0.01)), *work) for _ in range(11)]
    for got, want in zip(ngram_prices(lookups), truth):
        assert got == pytest.approx(want, rel=0.15, abs=0.2e-6)


def test_a_lookup_that_compares_or_finds_more_is_priced_dearer(tiny, tiny_profile):
    """The plan's compares and hits (held fixed by the shadow, as the tokens examined are) add
    to a lookup's price at the profile's prices; a profile from before (both 0) prices it as
    before."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    spec = resolve_model(str(tiny / "model"))
    after = load_calibration(tiny_profile).model_copy(update={
        "draft_ngram_s_per_compare": 0.1e-6, "draft_ngram_s_per_hit": 2e-6})
    before = after.model_copy(update={"draft_ngram_s_per_compare": 0.0,
                                      "draft_ngram_s_per_hit": 0.0})
    rows = np.array([100, 120])
    counts = np.zeros((2, len(Precision)), dtype=np.int64)
    counts[:, Precision.FP16] = 1

    def draft_s(profile, compares, hits) -> float:
        plan = StepPlan(phase="decode", request_ids=(0, 1), num_tokens=8, num_rows=8,
                        attended_pairs=float(rows.sum()), kv_read_bytes=0.0,
                        kv_dequant_values=0.0, placement=Placement("cpu", "cpu", "cpu"),
                        draft_len=3, tokens_per_seq=1.0, draft_scan_tokens=40.0,
                        draft_compares=compares, draft_hits=hits, row_tokens=rows,
                        row_block_counts=counts)
        model = CalibratedModel(profile, spec, draft_source="ngram", speculating=True)
        return sum(s.fixed_s for s in model.segments(plan) if s.op == "draft")

    base = draft_s(before, None, None)
    assert draft_s(before, 30, 2) == pytest.approx(base)
    assert draft_s(after, None, None) == pytest.approx(base)  # a simulated lookup: a miss
    assert draft_s(after, 30, 0) > base and draft_s(after, 0, 2) > base
    assert draft_s(after, 30, 2) > draft_s(after, 30, 1) > draft_s(after, 30, 0)


def test_a_block_is_quantized_in_the_step_that_stores_its_last_token(tiny, tiny_profile):
    """A decode step stores the K/V of the token it feeds (emitted by the step before): a block
    admitted at INT8 fills, and is quantized, in the step whose row holds ``n x block`` tokens
    at its start, not the step before (measured on SmolLM2-135M: the 6-7 ms of quantizing a
    block came one step after the model first charged it)."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    profile = load_calibration(tiny_profile)
    model = CalibratedModel(profile, resolve_model(str(tiny / "model")))
    bt = profile.block_tokens

    def work(tokens: int, accepted: int = 0, fp16: int = 0, at=Precision.INT8) -> float:
        counts = np.zeros((1, len(Precision)), dtype=np.int64)
        counts[0, at] = -(-tokens // bt) - fp16  # admitted at ``at``, the partial one too
        counts[0, Precision.FP16] = fp16
        plan = StepPlan(phase="decode", request_ids=(0,), num_tokens=1 + accepted,
                        num_rows=1 + accepted, attended_pairs=float(tokens), kv_read_bytes=0.0,
                        kv_dequant_values=0.0, placement=Placement("cpu", "cpu", "cpu"),
                        draft_len=accepted and 3, tokens_per_seq=1.0 + accepted,
                        row_tokens=np.array([tokens]), row_block_counts=counts)
        return model.retier_work_s(plan)

    assert work(2 * bt) > 0
    assert work(2 * bt - 1) == 0 and work(2 * bt + 1) == 0
    # a verify step that accepts 2 drafts stores 3 tokens: it fills a block ending among them
    assert work(2 * bt - 2, accepted=2) > 0 and work(2 * bt - 3, accepted=2) == 0
    # a row that keeps its recent blocks at FP16 (older ones demoted: progressive, kivi) fills
    # at FP16, nothing to quantize (measured: 0.14 ms of checks where 7 ms had been charged)
    assert work(2 * bt, fp16=2) == 0
    # a precision a profile lacks (one of calibration VERSION 16 or before, whose budget cut
    # the INT2 points) is priced all the same, at the mean of those it has
    untimed = profile.model_copy(update={"quantize_s_per_value": {
        k: v for k, v in profile.quantize_s_per_value.items() if k != "int2"}})
    model = CalibratedModel(untimed, resolve_model(str(tiny / "model")))
    assert work(2 * bt, at=Precision.INT2) == pytest.approx(work(2 * bt), rel=0.5)


def test_a_re_quantizing_is_priced_at_the_precision_it_goes_to(tiny, tiny_profile):
    """The plan says which precision re-quantized values went to; each costs that precision's
    price (measured: 14 FP16 blocks demoted to INT8 took 46 ms, priced 65 ms at the mean of
    INT8, INT4 and INT2); values a plan does not place cost the mean."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    profile = load_calibration(tiny_profile).model_copy(update={
        "quantize_s_per_value": {"int8": 1e-9, "int4": 4e-9, "int2": 10e-9},
        "pass_quantize_s_per_value": {}, "retier_s_per_block": 0.0})
    model = CalibratedModel(profile, resolve_model(str(tiny / "model")))
    n = 1_000_000

    def cost(into) -> float:
        plan = StepPlan(phase="decode", request_ids=(0,), num_tokens=1, num_rows=1,
                        attended_pairs=64.0, kv_read_bytes=0.0, kv_dequant_values=0.0,
                        placement=Placement("cpu", "cpu", "cpu"), kv_requant_values=n,
                        kv_requant_into=into, row_tokens=np.array([64]),
                        row_block_counts=np.zeros((1, len(Precision)), dtype=np.int64))
        return model.retier_work_s(plan)

    assert cost((n, 0, 0)) == pytest.approx(1e-3)
    assert cost((0, 0, n)) == pytest.approx(10e-3)
    assert cost((0, 0, 0)) == pytest.approx(5e-3)  # not placed: the mean


def test_a_checks_first_block_is_priced_as_a_fill_the_next_ones_as_a_pass(tiny, tiny_profile):
    """One tier check quantizing n blocks to a precision pays a fill's price for the first and
    the pass price for each next one (measured 2026-12-05: 14 blocks to INT8 in one pass took
    16.1 ms where 29.2 ms had been charged at a fill's price each; kivi's passes of 2-6
    blocks 25-32 % over); a prompt's blocks, quantized after its prefill, the same; a profile
    without pass prices charges every block a fill's."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    spec = resolve_model(str(tiny / "model"))
    profile = load_calibration(tiny_profile).model_copy(update={
        "quantize_s_per_value": {"int8": 4e-9, "int4": 4e-9, "int2": 4e-9},
        "pass_quantize_s_per_value": {"int8": 1e-9, "int4": 2e-9, "int2": 3e-9},
        "retier_s_per_block": 0.0, "copy_bytes_per_s": 1e30, "shift_bytes_per_s": None})
    bt = profile.block_tokens
    block = spec.kv_values_per_token * bt
    tiers = (Precision.INT8, Precision.INT4, Precision.INT2)

    def moves(blocks: dict, prof=profile) -> float:
        into = tuple(blocks.get(p, 0) * block for p in tiers)
        plan = StepPlan(phase="decode", request_ids=(0,), num_tokens=1, num_rows=1,
                        attended_pairs=64.0, kv_read_bytes=0.0, kv_dequant_values=0.0,
                        placement=Placement("cpu", "cpu", "cpu"), kv_requant_values=sum(into),
                        kv_requant_into=into, row_tokens=np.array([64]),
                        row_block_counts=np.zeros((1, len(Precision)), dtype=np.int64))
        return CalibratedModel(prof, spec).retier_work_s(plan)

    assert moves({Precision.INT8: 1}) == pytest.approx(4e-9 * block)
    assert moves({Precision.INT8: 14}) == pytest.approx((4e-9 + 13 * 1e-9) * block)
    # each precision's first block is a fill's
    assert moves({Precision.INT8: 3, Precision.INT2: 2}) == pytest.approx(
        (4e-9 + 2 * 1e-9 + 4e-9 + 3e-9) * block)
    before = profile.model_copy(update={"pass_quantize_s_per_value": {}})
    assert moves({Precision.INT4: 6}, before) == pytest.approx(6 * 4e-9 * block)

    def prompt(blocks: int) -> float:
        tokens = blocks * bt
        counts = np.zeros((1, len(Precision)), dtype=np.int64)
        counts[0, Precision.INT4] = blocks
        plan = StepPlan(phase="prefill", request_ids=(0,), num_tokens=tokens, num_rows=tokens,
                        attended_pairs=float(tokens), kv_read_bytes=0.0, kv_dequant_values=0.0,
                        placement=Placement("cpu", "cpu", "cpu"), row_tokens=np.array([tokens]),
                        row_block_counts=counts)
        return CalibratedModel(profile, spec).retier_work_s(plan)

    assert prompt(8) == pytest.approx((4e-9 + 7 * 2e-9) * block)


def test_an_eviction_pass_is_priced_besides_its_bytes(tiny, tiny_profile):
    """An eviction (or offload) pass and a block restored to FP16 cost ``shift_s_per_pass``
    besides the bytes the arena shifts (measured 2026-12-05: h2o's evictions of 1.5-2.4 MB
    took 0.33-0.43 ms where 0.18-0.22 ms was charged by the byte alone)."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    spec = resolve_model(str(tiny / "model"))
    profile = load_calibration(tiny_profile).model_copy(update={
        "shift_bytes_per_s": 1e9, "shift_s_per_pass": 1e-4})

    def cost(shift_bytes: int, passes: int, prof=profile) -> float:
        plan = StepPlan(phase="decode", request_ids=(0,), num_tokens=1, num_rows=1,
                        attended_pairs=64.0, kv_read_bytes=0.0, kv_dequant_values=0.0,
                        placement=Placement("cpu", "cpu", "cpu"), kv_shift_bytes=shift_bytes,
                        kv_shift_passes=passes, row_tokens=np.array([64]),
                        row_block_counts=np.zeros((1, len(Precision)), dtype=np.int64))
        return CalibratedModel(prof, spec).retier_work_s(plan)

    assert cost(2_000_000, 1) == pytest.approx(2e-3 + 1e-4)
    assert cost(2_000_000, 3) == pytest.approx(2e-3 + 3e-4)
    before = profile.model_copy(update={"shift_s_per_pass": 0.0})  # a profile from before
    assert cost(2_000_000, 3, before) == pytest.approx(2e-3)


def _check_s(model, phase: str, tokens: list[int]) -> float:
    """What ``model`` charges a step of rows of ``tokens`` (all FP16) for its tier checks."""
    from policies import Placement, Precision
    from sim.engine.executor import StepPlan

    rows = np.array(tokens)
    counts = np.zeros((len(rows), len(Precision)), dtype=np.int64)
    counts[:, Precision.FP16] = -(-rows // model.bt)
    plan = StepPlan(phase=phase, request_ids=tuple(range(len(rows))),
                    num_tokens=len(rows) if phase == "decode" else int(rows.sum()),
                    num_rows=len(rows), attended_pairs=float(rows.sum()), kv_read_bytes=0.0,
                    kv_dequant_values=0.0, placement=Placement("cpu", "cpu", "cpu"),
                    row_tokens=rows, row_block_counts=counts)
    return sum(s.fixed_s for s in model.segments(plan) if s.op == "retier")


def test_a_check_pays_for_the_rows_whose_full_blocks_grew(tiny, tiny_profile):
    """The check after a forward pays ``retier_growth_s`` when a row's full blocks grew (the
    executor's record of them grows): a prompt of a block or more, a decode step that stores a
    block's last token; ``retier_growth_s_per_next_row`` for each other such row (measured
    2026-12-05: a 63-token prompt's check 64 µs, a 64-token one's 84 µs: prefill checks were
    predicted 20-50 % short)."""
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration

    spec = resolve_model(str(tiny / "model"))
    profile = load_calibration(tiny_profile).model_copy(update={
        "retier_growth_s": 20e-6, "retier_growth_s_per_next_row": 5e-6})
    model = CalibratedModel(profile, spec)
    bt = profile.block_tokens
    short = _check_s(model, "prefill", [bt - 1])
    assert _check_s(model, "prefill", [bt]) == pytest.approx(short + 20e-6)
    assert _check_s(model, "prefill", [3 * bt + 2]) == pytest.approx(short + 20e-6)
    two = _check_s(model, "prefill", [bt - 1, bt - 2])
    assert _check_s(model, "prefill", [bt, 2 * bt]) == pytest.approx(two + 25e-6)
    assert _check_s(model, "prefill", [bt, bt - 1]) == pytest.approx(two + 20e-6)
    # decode: the step that stores a block's last token (a row of n x bt tokens at its start)
    plain = _check_s(model, "decode", [2 * bt + 1])
    assert _check_s(model, "decode", [2 * bt]) == pytest.approx(plain + 20e-6)
    assert _check_s(model, "decode", [2 * bt - 1]) == pytest.approx(plain)
    before = CalibratedModel(profile.model_copy(update={  # a profile from before: as it was
        "retier_growth_s": 0.0, "retier_growth_s_per_next_row": 0.0}), spec)
    assert _check_s(before, "prefill", [bt]) == pytest.approx(short)


def test_an_observing_policys_checks_have_their_own_prices(tiny, tiny_profile):
    """The check after a forward that measured attention is priced from the calibration's
    observed steps (ONNX Runtime's measured 38 µs a row where 57 without: validation-long's
    streaming and progressive checks were predicted 40-45 % high); the warm check before the
    forward keeps its price, and a profile without observed prices prices both alike."""
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration

    spec = resolve_model(str(tiny / "model"))
    base = load_calibration(tiny_profile).model_copy(update={
        "retier_s_per_check": 50e-6, "retier_s_per_row": 4e-6, "retier_s_multi_row": 3e-6,
        "retier_warm_s_per_check": 7e-6, "retier_warm_s_per_row": 2e-6,
        "retier_warm_s_multi_row": 1e-6, "retier_growth_s": 0.0,
        "retier_growth_s_per_next_row": 0.0, "retier_observed_growth_s": 0.0,
        "retier_observed_growth_s_per_next_row": 0.0, "retier_observed_s_per_check": None})
    observed = base.model_copy(update={"retier_observed_s_per_check": 30e-6,
                                       "retier_observed_s_per_row": 4e-6,
                                       "retier_observed_s_multi_row": 3e-6})
    bt = base.block_tokens
    rows = [2 * bt + 1, 2 * bt + 5]
    for prof in (base, observed):
        plain = CalibratedModel(prof, spec)
        assert _check_s(plain, "decode", rows) == pytest.approx(
            (50 + 8 + 3) * 1e-6 + (7 + 4 + 1) * 1e-6)
    watching = CalibratedModel(observed, spec, observing=True)
    assert _check_s(watching, "decode", rows) == pytest.approx(
        (30 + 8 + 3) * 1e-6 + (7 + 4 + 1) * 1e-6)
    assert _check_s(watching, "prefill", [bt - 1]) == pytest.approx(34e-6)
    assert _check_s(CalibratedModel(base, spec, observing=True), "decode", rows) == \
        pytest.approx(_check_s(CalibratedModel(base, spec), "decode", rows))


def test_the_check_after_a_verify_pass_has_its_own_price(tiny, tiny_profile):
    """A speculative step's check after the forward follows the verify pass and its acceptance
    loop, and is priced from the calibration's speculative steps (measured 2026-12-05 under
    torch: 83-88 µs over two rows where a decode step's took 92-94, predicted 10-17 % high);
    a profile without that price prices it as a decode step's."""
    from policies import Placement, Precision
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel, load_calibration
    from sim.engine.executor import StepPlan

    spec = resolve_model(str(tiny / "model"))
    before = load_calibration(tiny_profile).model_copy(update={
        "retier_verify_s_per_check": None, "retier_growth_s": 0.0,
        "retier_growth_s_per_next_row": 0.0})
    after = before.model_copy(update={"retier_verify_s_per_check": 40e-6,
                                      "retier_verify_s_per_next_row": 10e-6})
    bt = before.block_tokens

    def checks(profile, k: int) -> float:
        rows = np.array([2 * bt + 3, 2 * bt + 7])
        counts = np.zeros((2, len(Precision)), dtype=np.int64)
        counts[:, Precision.FP16] = 3
        plan = StepPlan(phase="decode", request_ids=(0, 1), num_tokens=2 * (k + 1),
                        num_rows=2 * (k + 1), attended_pairs=float(rows.sum()),
                        kv_read_bytes=0.0, kv_dequant_values=0.0,
                        placement=Placement("cpu", "cpu", "cpu"), draft_len=k,
                        tokens_per_seq=1.0, draft_scan_tokens=0.0, row_tokens=rows,
                        row_block_counts=counts)
        model = CalibratedModel(profile, spec, draft_source="ngram", speculating=True)
        return sum(s.fixed_s for s in model.segments(plan) if s.op == "retier")

    assert checks(after, 0) == pytest.approx(checks(before, 0))  # a plain step: as before
    assert checks(before, 3) == pytest.approx(checks(before, 0))
    assert checks(after, 3) == pytest.approx(checks(before, 0) - CalibratedModel(
        before, spec)._tier_check_s(2) + 50e-6)
