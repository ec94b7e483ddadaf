"""The ``calibrated`` cost model: step time = a linear combination of the work a forward pass does
(roofline terms: weight bytes, matmul FLOPs, attention FLOPs, KV bytes, dequantized values) and of
its overheads (per forward, per layer, per row and layer, per token and layer), with coefficients
fitted from microbenchmarks of a real executor on this machine (``infer-os calibrate``).
``gemm_layer`` is a per-layer step up when a forward has more than one query row: matrix-vector
products (one row, the weights streamed once, a fast path on CPUs) become matrix-matrix ones, and
attention needs a mask; measured on SmolLM2-135M / 2 vCPUs: 39 ms for one row, 62 ms for two
rows, 76 ms for one row of three tokens.

The terms are summed, not maxed as in ``roofline``: on the CPUs and eager executors we calibrate,
the phases of one op (streaming weights, multiply-adds, Python dispatch) overlap little, and a sum
fits the measurements better (the fit's residuals are in the profile).  The profile also records
how the executor lays its work out, which the features follow:

- ``prefill: sequential``: one forward per request (no padding across prompts);
- ``batch: padded``: a decode batch runs padded to its longest row; ``fused``: a decode or verify
  pass attends row by row over each row's own keys (the torch executor's fused kernel on CPUs,
  ``adapters.kv.fused``), except a pass that measures attention for a tiering policy, which
  runs padded (``attention_padded``);
- ``kv_tail: fp16-tokens``: the partial last block of a request stays FP16 until it fills, KV
  memory is counted by tokens, and a tiering decision takes effect on a request at the end of
  the next step it takes part in (``sim.engine.kv_layout.TokenTailLayout``).

``sim.costs.features.forward_features`` is the single definition of the features: the
calibration computes them from the state it measured, this model from the engine's step plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError

from policies import Precision
from sim.config.frozen import Frozen, user_error
from sim.config.model_spec import ModelSpec
from sim.config.yaml_io import load_yaml
from sim.costs.cost_model import Segment
from sim.costs.features import (
    FEATURES,
    Feature,
    attention_padded,
    forward_features,
    fused_attention,
)
from sim.costs.retier_costs import QUANTIZED, RetierCosts, pass_prices, quantize_prices
from sim.engine.executor import StepPlan
from sim.errors import UserError

MAX_THREADS = 1024
MAX_BLOCK_TOKENS = 2**16  # also the largest quantization group


def _seconds(default: float | None = None):
    """Seconds (per unit of something): >= 0 (a negative one would run time backwards)."""
    return Field(ge=0) if default is None else Field(default=default, ge=0)


Seconds = Annotated[float, _seconds()]


def _rate(default: float):
    """Bytes per second: > 0; ``.inf`` (written by hand, never by ``calibrate``) makes the
    work it times free."""
    return Field(default=default, gt=0, allow_inf_nan=True)


class ExecutorLayout(Frozen):
    prefill: Literal["sequential", "batched"] = "sequential"
    batch: Literal["padded", "exact", "fused"] = "padded"
    kv_tail: Literal["fp16-tokens", "blocks"] = "fp16-tokens"


class FitQuality(Frozen):
    """Signed relative errors of the fitted model on measured steps: in-sample and on points
    held out of the fit (every fifth)."""

    num_points: int = Field(ge=0)
    median_abs_error: float = Field(ge=0)
    p90_abs_error: float = Field(ge=0)
    max_abs_error: float = Field(ge=0)
    holdout_median_abs_error: float | None = Field(default=None, ge=0)
    holdout_max_abs_error: float | None = Field(default=None, ge=0)


class CalibrationProfile(Frozen):
    """What ``infer-os calibrate`` writes: who was measured, the raw microbenchmarks, and the
    fitted seconds per unit of each feature (``coefficients``, keys of ``FEATURES``) plus the
    costs of re-tiering and allocation.  Every number is finite
    (docs/simulator-notes.md#limits-and-validation) but the two documented rates."""

    kind: Literal["infer-os-calibration"] = "infer-os-calibration"
    version: int = Field(default=1, ge=1)
    backend: str
    device: str
    machine: str  # a fingerprint of the CPU/GPU, core count and library versions
    model: str
    dtype: str
    kv_dtype: str
    threads: int = Field(ge=1, le=MAX_THREADS)
    block_tokens: int = Field(ge=1, le=MAX_BLOCK_TOKENS)
    kv_quant_group: int = Field(ge=1, le=MAX_BLOCK_TOKENS)
    layout: ExecutorLayout = ExecutorLayout()
    primitives: dict[str, float] = Field(default_factory=dict)  # informative, not used
    # seconds per unit of each feature (a feature left out costs nothing)
    coefficients: dict[Feature, Seconds]
    quantize_s_per_value: dict[Literal["int8", "int4", "int2"], Seconds] = Field(
        default_factory=dict)  # by precision: a block quantized in a step, all of it per value
    # by precision: each block after the first one tier check quantizes, per value (none, in a
    # profile from before: a fill's price)
    pass_quantize_s_per_value: dict[Literal["int8", "int4", "int2"], Seconds] = Field(
        default_factory=dict)
    retier_s_per_block: float = _seconds(0.0)
    copy_bytes_per_s: float = _rate(1e10)
    # FP16 bytes the executor's arena shifts a second to stay compact (``kv_shift_bytes``),
    # timed in whole steps (None, in a profile from before: not priced)
    shift_bytes_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # and per eviction or offload pass and per block restored to FP16 (``kv_shift_passes``),
    # besides its bytes (0, in a profile from before)
    shift_s_per_pass: float = _seconds(0.0)
    alloc_s: float = _seconds(0.0)
    alloc_bytes_per_s: float = _rate(1e10)
    draft_ngram_s_per_token: float = _seconds(0.0)  # an n-gram lookup, per token it examines
    draft_ngram_s_per_call: float = _seconds(0.0)  # and per lookup: a step's first
    draft_ngram_s_per_next_call: float | None = None  # its other rows' (None: as the first)
    # per start whose first token matched (a slice compared) and per row whose lookup found an
    # n-gram (0, in a profile from before: priced as the call)
    draft_ngram_s_per_compare: float = _seconds(0.0)
    draft_ngram_s_per_hit: float = _seconds(0.0)
    # the executor's check of every row's tiers when nothing moves, per check, per row and a
    # step up when it checks more than one row (measured: 1 row ~50 µs, 2-4 rows ~80-100 µs): after
    # a forward (after every step), and warm (before a decode step, after the engine's work)
    retier_s_per_check: float = _seconds(0.0)
    retier_s_per_row: float = _seconds(0.0)
    retier_s_multi_row: float = _seconds(0.0)
    retier_warm_s_per_check: float = _seconds(0.0)
    retier_warm_s_per_row: float = _seconds(0.0)
    retier_warm_s_multi_row: float = _seconds(0.0)
    # the check after a forward that measured attention (a tiering policy that observes
    # blocks): per check, per row, multi-row step (None, in a profile from before: as above).
    # Measured 2026-12-05: ONNX Runtime's 38 µs a row where 57 without (recording the attention
    # runs Python between the session and the check), torch's alike
    retier_observed_s_per_check: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retier_observed_s_per_row: float = _seconds(0.0)
    retier_observed_s_multi_row: float = _seconds(0.0)
    # the check after a verify pass (a speculative step): over one row, each next row (None,
    # in a profile from before: as a decode step's).  Measured 2026-12-05: 83-88 µs over two
    # rows where a decode step's took 92-94 (torch)
    retier_verify_s_per_check: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retier_verify_s_per_next_row: float = _seconds(0.0)
    # what the check after a forward pays besides when a row's full blocks grew (a prompt of a
    # block or more; a decode step that fills a block): the first such row, each next one;
    # without and with attention measured (0, in a profile from before).  Measured
    # 2026-12-05: a 63-token prompt's check 64 µs, a 64-token one's 84 µs (64-token blocks)
    retier_growth_s: float = _seconds(0.0)
    retier_growth_s_per_next_row: float = _seconds(0.0)
    retier_observed_growth_s: float = _seconds(0.0)
    retier_observed_growth_s_per_next_row: float = _seconds(0.0)
    # the speed check's reference steps as the calibration measured them (seconds, in the order
    # ``validate``'s speed check re-times them); empty in profiles from before version 6 and
    # hand-written ones, where the check compares with the fitted model instead
    reference_s: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list,
                                                             max_length=64)
    fit: FitQuality | None = None
    seconds: float = _seconds(0.0)  # how long the calibration took
    # set at run time, never stored: how much slower the machine runs now than when the
    # profile was fitted (``validate``'s speed check); every predicted time is scaled by it
    speed_factor: float = Field(default=1.0, gt=0, exclude=True)

    def coefficient_vector(self) -> np.ndarray:
        return np.array([self.coefficients.get(name, 0.0) for name in FEATURES])


def load_calibration(path: Path, field: str = "--profile") -> CalibrationProfile:
    """The profile at ``path``; ``UserError`` with a line per problem, each at ``path`` and
    the key in it (``field``, the option that named the file, for the whole file)."""
    try:
        raw = load_yaml(path, "calibration profile")
        return CalibrationProfile.model_validate(raw)
    except ValidationError as err:
        bad = user_error(err, raw, file=str(path), prefix="not a calibration profile: ")
    except UserError as err:
        bad = err
    raise UserError.collect([UserError(e.message, file=e.file, field=e.field or field)
                             for e in bad.errors])


def dump_calibration(profile: CalibrationProfile) -> str:
    """Deterministic YAML: keys in a fixed order, floats at 6 significant digits."""
    def tidy(x):
        if isinstance(x, float):
            return float(f"{x:.6g}")
        if isinstance(x, dict):
            return {k: tidy(v) for k, v in x.items()}
        return x
    return yaml.safe_dump(tidy(profile.model_dump(mode="json")), sort_keys=False)


def split_rows(block_counts: np.ndarray, tokens: np.ndarray, block_tokens: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: resident tokens and quantized tokens [rows, 3] from the store's blocks by
    precision; the partial last block is FP16 (``kv_tail: fp16-tokens``) and absent blocks are
    not attended."""
    counts = np.asarray(block_counts, dtype=np.int64).reshape(len(tokens), -1)
    tokens = np.asarray(tokens, dtype=np.int64)
    full = tokens // block_tokens
    quantized = counts[:, [int(p) for p in QUANTIZED]].astype(np.int64)
    # the store counts the partial block at its admitted precision; the executor keeps it FP16
    tail = tokens - full * block_tokens
    total_blocks = counts.sum(axis=1)
    # (only rows without FP16 blocks, where the last block must be a quantized one)
    partial_quant = ((tail > 0) & (total_blocks > full) & (counts[:, Precision.FP16] == 0)
                     & (quantized.sum(axis=1) > 0))
    if partial_quant.any():
        last = quantized.shape[1] - 1 - np.argmax(quantized[:, ::-1] > 0, axis=1)
        quantized[partial_quant, last[partial_quant]] -= 1
    absent = counts[:, Precision.OFFLOADED] + counts[:, Precision.EVICTED]
    resident = tokens - absent * block_tokens
    return np.maximum(resident, 0), quantized * block_tokens


class CalibratedModel(RetierCosts):
    """Predicts the calibrated executor's step times from the engine's step plans (the
    re-tiering work it prices by ``sim.costs.retier_costs``)."""

    name = "calibrated"

    def __init__(self, profile: CalibrationProfile, model: ModelSpec,
                 draft: ModelSpec | None = None, draft_source: str = "model",
                 speculating: bool = False, observing: bool = False):
        self.p, self.model, self.observing = profile, model, observing
        # a draft model (or the target's first layers) runs only when speculation is on
        self.draft = draft if speculating and draft_source != "ngram" else None
        self.draft_source = draft_source
        self.coef = profile.coefficient_vector()
        bits = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
        self.weight_b = bits.get(profile.dtype, 4.0)
        self.kv_b = bits.get(profile.kv_dtype, 2.0)
        self.batch = profile.layout.batch
        self.quant_s = quantize_prices(profile.quantize_s_per_value)
        self.pass_s = pass_prices(profile.pass_quantize_s_per_value, self.quant_s)
        self.bt = profile.block_tokens

    def forward_s(self, spec: ModelSpec, layers: int, new_tokens: int, resident: np.ndarray,
                  quantized: np.ndarray, head_rows: int, observed: bool = False) -> float:
        f = forward_features(spec, layers, new_tokens, resident, quantized, head_rows,
                             self.weight_b, self.kv_b,
                             attention_padded(self.batch, observed), observed,
                             fused_attention(self.batch, observed, spec, new_tokens))
        return float(f @ self.coef)

    def segments(self, plan: StepPlan) -> list[Segment]:
        out = self._segments(plan)
        if self.p.speed_factor != 1.0:
            for seg in out:
                seg.fixed_s *= self.p.speed_factor
        return out

    def retier_work_s(self, plan: StepPlan) -> float:
        """The re-tiering work the step is predicted to do, the tier checks left out: blocks
        quantized as they fill, re-quantized, copied to or from the host, recomputed (seconds,
        unscaled; 0 when no block moves).  The shadow (``sim.run.shadow``) tells the steps that
        move blocks from those that only check by it."""
        return sum(s.fixed_s for s in self._segments(plan, checks=False) if s.op == "retier")

    def _segments(self, plan: StepPlan, checks: bool = True) -> list[Segment]:
        spec, L = self.model, self.model.num_layers
        tokens = np.asarray(plan.row_tokens, dtype=np.int64)
        out = []
        # one device runs the whole step: the executors we calibrate have one
        self.device = (plan.placement.prefill if plan.phase == "prefill"
                       else plan.placement.decode_attention)
        if plan.phase == "prefill":
            none = np.zeros((1, 3))
            seconds = sum(self.forward_s(spec, L, int(p), np.zeros(1), none, 1, self.observing)
                          for p in tokens)
            if self.draft is not None:  # the draft fills its own cache
                seconds += sum(self.forward_s(self.draft, self.draft.num_layers, int(p) - 1,
                                              np.zeros(1), none, 1)
                               for p in tokens if p > 1)
            out.append(Segment(self.device, "prefill", 0.0, 0.0, seconds))
            fill = self._fill_segment(plan, tokens, np.zeros_like(tokens), tokens)
            fill.fixed_s += checks * self._after_check_s(  # the tier check after
                len(tokens), int(np.count_nonzero(tokens >= self.bt)))
            out.append(fill)
            return out
        resident, quantized = split_rows(plan.row_block_counts, tokens, self.bt)
        B, k = len(tokens), plan.draft_len
        if k:
            out.append(Segment(self.device, "draft", 0.0, 0.0,
                               self._draft_s(k, resident, plan)))
        T = k + 1
        seconds = self.forward_s(spec, L, T, resident, quantized, B * T, self.observing)
        out.append(Segment(self.device, "verify" if k else "decode", 0.0, 0.0, seconds))
        # the K/V the step stores: a row's last token (emitted by the step before, stored by
        # this one, which feeds it) and the drafts it accepts; a block fills, and is quantized,
        # in the step that stores its last token, one step after the one that emitted it
        stored = tokens - 1
        after = stored + (T if not k else round(plan.tokens_per_seq))
        fill = self._fill_segment(plan, tokens, stored, after)
        # the tier checks after the forward and (warm) before it
        grown = int(np.count_nonzero(after // self.bt > stored // self.bt))
        fill.fixed_s += checks * (self._after_check_s(B, grown, verify=k > 0)
                                  + self._tier_check_s(B, warm=True))
        if fill.fixed_s:
            out.append(fill)
        if (plan.kv_copy_bytes or plan.kv_requant_values or plan.kv_recompute_tokens
                or plan.kv_shift_bytes or plan.kv_shift_passes):
            out.append(self._retier_segment(plan))
        if plan.num_allocs:
            out.append(Segment(self.device, "alloc", 0.0, 0.0,
                               plan.num_allocs * self.p.alloc_s
                               + plan.alloc_bytes / self.p.alloc_bytes_per_s))
        return out

    def _draft_s(self, k: int, resident: np.ndarray, plan: StepPlan) -> float:
        """Row by row (unpadded): a catch-up pass over the tokens accepted since the last
        proposal (taken as 2) and k - 1 one-token passes; n-gram drafts: a lookup per row, over
        the plan's ``draft_scan_tokens``, with its compares and hits (None: every row's whole
        context, nothing found, as when nothing recurs)."""
        if self.draft is None:
            scanned = plan.draft_scan_tokens
            tokens = float(resident.sum()) if scanned is None else scanned
            p = self.p
            nxt = p.draft_ngram_s_per_call if p.draft_ngram_s_per_next_call is None else \
                p.draft_ngram_s_per_next_call
            return (tokens * p.draft_ngram_s_per_token + p.draft_ngram_s_per_call
                    + (len(resident) - 1) * nxt
                    + (plan.draft_compares or 0) * p.draft_ngram_s_per_compare
                    + (plan.draft_hits or 0) * p.draft_ngram_s_per_hit)
        d, layers, none = self.draft, self.draft.num_layers, np.zeros((1, 3))
        seconds = 0.0
        for r in resident.tolist():
            seconds += self.forward_s(d, layers, 2, np.array([r]), none, 1)
            seconds += (k - 1) * self.forward_s(d, layers, 1, np.array([r + 2]), none, 1)
        return seconds
