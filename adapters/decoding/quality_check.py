"""Quality as a validated prediction: each tiering variant of a scenario scored for real, beside
what the simulator estimates (``infer-os validate-quality``).

For every variant, the scenario's own tiering policy runs through the real paged KV store over
windows of real text, teacher-forced (``adapters.decoding.perplexity.tiered_nll``: the policy
decides after every chunk, on the engine's view of the cache, and the next chunk is scored from a
cache held at the precisions it chose).  The measured delta-PPL is the variant's perplexity minus
the FP16 perplexity of the same windows.  Two predictions stand beside it:

- **on the same decisions**: the scenario's quality model (its ``quality`` section: a fitted
  profile or the placeholders) over the KV state the text was actually scored under (its
  attention shares and precisions, charged as ``sim.quality.model`` charges them)
  (``sim.quality.fit.predict``, which runs ``sim.quality.model`` itself).  Its error is the
  quality model's alone, as the shadow prediction's is the cost model's.  The model's penalties
  are delta-PPL at its ``base_ppl`` (the text it was fitted on); a text's own perplexity is a
  property of model and text the simulator does not predict (as acceptance is for speculation),
  so the prediction is taken at the measured FP16 perplexity of these windows: scaled by
  ``measured base / base_ppl`` (a perplexity change is relative: the same noise in the cache
  costs a text that is hard to predict more perplexity points), and the scale is reported;
- **free-running**: the simulator's own ``quality.delta_ppl_mean`` for the scenario (synthetic
  attention, its workload, its cost model), what ``simulate`` reports.

A row passes (``ok``) when the prediction on the same decisions is within 15 % of the measurement,
or within 0.05 absolute where the measured delta-PPL is below 0.1 (a relative error of a
near-zero change means little).

**The measurement's own spread.**  A delta-PPL measured on a few windows is a sample: the same
policy on other windows of the same text reads differently (on 2 windows of 2,048 tokens, the two
windows' delta-PPL differ by 1.5-3x for half the jobs of ``benchmarks/quality_fit.py``).  Each
row carries ``spread``: a 90 % paired bootstrap interval of the measured delta-PPL over the scored
chunks (the same chunks resampled for the variant and for FP16, 2,000 resamples, a fixed seed, so
it is deterministic), and a ``verdict`` as ``validate --repeats`` gives one: ``noise`` when the
prediction lies inside that interval, ``model`` when outside (an error the measurement's sampling
cannot explain).

The device budget of each window is the budget one request of the scenario's full batch has:
``kv_budget_bytes / engine.max_batch`` over the FP16 bytes of the window (``budget_frac`` overrides
it), so a pressure-driven policy (``progressive``) sees the pressure the scenario gives it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies import Precision
from sim.engine.kv_store import block_bytes
from sim.errors import UserError
from sim.quality.fit import attention_mix, charged_mix, predict

REL_BOUND = 0.15  # the quality model's goal: within 15 % ...
ABS_BOUND, SMALL = 0.05, 0.1  # ... or within 0.05 absolute below a measured 0.1
SPREAD_LEVEL, RESAMPLES = 0.90, 2000  # the measured delta-PPL's bootstrap interval
MIN_SPREAD_CHUNKS = 4  # fewer scored chunks than this: no interval (one chunk gives a point)


@dataclass(frozen=True)
class Chunks:
    """The scored chunks of a run over some windows, in order: tokens and NLL (nats) each."""

    num_scored: np.ndarray
    nll: np.ndarray

    @classmethod
    def of(cls, passes) -> Chunks:
        kept = [p for p in passes if p.num_scored]
        return cls(np.array([p.num_scored for p in kept], dtype=np.int64),
                   np.array([p.nll_sum for p in kept], dtype=np.float64))


def delta_ppl_spread(base: Chunks, run: Chunks, level: float = SPREAD_LEVEL,
                     resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """A ``level`` paired bootstrap interval of ``run``'s perplexity minus ``base``'s: the same
    chunks (the same text) drawn with replacement for both, ``resamples`` times.  The runs must
    have scored the same chunks."""
    if not np.array_equal(base.num_scored, run.num_scored):
        raise ValueError("the two runs scored different chunks; no paired interval")
    if len(base.num_scored) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base.num_scored), size=(resamples, len(base.num_scored)))
    n = base.num_scored[pick].sum(axis=1)
    delta = np.exp(run.nll[pick].sum(axis=1) / n) - np.exp(base.nll[pick].sum(axis=1) / n)
    lo, hi = np.quantile(delta, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def measured_spread(base: Chunks, run: Chunks) -> tuple[float, float] | None:
    """``delta_ppl_spread``, or None when the runs scored fewer than ``MIN_SPREAD_CHUNKS``
    chunks: resampling one or two chunks gives an interval of (nearly) no width, which would
    call every prediction off the point a model error."""
    if len(base.num_scored) < MIN_SPREAD_CHUNKS:
        return None
    return delta_ppl_spread(base, run)


def text_windows(ids: list[int], num_windows: int, context: int,
                 text: str = "") -> list[list[int]]:
    """``num_windows`` windows of ``context`` tokens spread evenly over ``ids``.  A text too short
    for them is a ``UserError`` at ``--text`` (``text`` names it): at least ``context`` tokens,
    and for more than one window, starts ``context / num_windows`` tokens apart or more (about
    twice the context in all; closer, the windows repeat each other's tokens and the spread
    would count the same text twice)."""
    stride = (len(ids) - context) // max(num_windows, 1)
    need = context + (num_windows * -(-context // num_windows) if num_windows > 1 else 0)
    if len(ids) < need:
        raise UserError(f"{text or 'the text'} holds {len(ids)} tokens; {num_windows} "
                        f"window{'s' * (num_windows > 1)} of {context} tokens need {need} or more "
                        "(lower --windows or --context)", field="--text")
    return [ids[i * stride:i * stride + context] for i in range(num_windows)]


def within_bounds(predicted: float, measured: float) -> bool:
    if measured < SMALL and abs(predicted - measured) <= ABS_BOUND:
        return True
    return bool(measured) and abs(predicted - measured) / abs(measured) <= REL_BOUND


@dataclass
class QualityRow:
    variant: str
    policy: str
    budget_frac: float
    ppl: float
    measured_delta_ppl: float
    predicted_delta_ppl: float  # the quality model on the decisions taken
    simulated_delta_ppl: float | None  # the simulator's free-running estimate for the scenario
    # (at the scenario's base_ppl: what ``simulate`` reports, not rescaled)
    kv_saved_frac: float
    attention_mix: dict[str, float] = field(default_factory=dict)
    # the measured delta-PPL's 90 % interval (None: too few scored chunks to resample)
    spread: tuple[float, float] | None = (0.0, 0.0)

    @property
    def verdict(self) -> str | None:
        """``noise``: the prediction lies inside the measurement's own spread; ``model``: not;
        None without a spread."""
        if self.spread is None:
            return None
        lo, hi = self.spread
        return "noise" if lo <= self.predicted_delta_ppl <= hi else "model"

    @property
    def relative_error(self) -> float | None:
        m = self.measured_delta_ppl
        return (self.predicted_delta_ppl - m) / m if m else None

    @property
    def ok(self) -> bool:
        return within_bounds(self.predicted_delta_ppl, self.measured_delta_ppl)

    def as_dict(self) -> dict:
        def r(x):
            return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")
        return {"variant": self.variant, "policy": self.policy,
                "budget_frac": r(self.budget_frac), "ppl": r(self.ppl),
                "measured_delta_ppl": r(self.measured_delta_ppl),
                "predicted_delta_ppl": r(self.predicted_delta_ppl),
                "relative_error": r(self.relative_error), "ok": self.ok,
                "spread": None if self.spread is None else [r(v) for v in self.spread],
                "verdict": self.verdict,
                "simulated_delta_ppl": r(self.simulated_delta_ppl),
                "kv_saved_frac": r(self.kv_saved_frac),
                "attention_mix": {k: r(v) for k, v in self.attention_mix.items()}}


def window_budget_frac(setup, context: int) -> float:
    """One request's share of the scenario's device KV budget over the window's FP16 bytes."""
    scn, spec = setup.scenario, setup.model
    bt = scn.engine.block_tokens
    fp16 = block_bytes(spec.kv_values_per_token, bt, scn.engine.kv_quant_group)[Precision.FP16]
    window = -(-context // bt) * fp16
    return setup.kv_budget_bytes / max(scn.engine.max_batch, 1) / window


def score(model, windows: list[list[int]], policy, scn, budget_frac: float, kv_dtype):
    """``policy`` (a fresh copy per window: its state is per request) over every window ->
    (perplexity, kv saved fraction, the attention mix scored under, the mix the quality model
    charges (``sim.quality.fit.charged_mix``), the scored chunks)."""
    from adapters.decoding.perplexity import tiered_nll

    runs = [tiered_nll(model, ids, copy.deepcopy(policy), block_tokens=scn.engine.block_tokens,
                       group=scn.engine.kv_quant_group, kv_dtype=kv_dtype,
                       budget_frac=budget_frac, quality=scn.quality) for ids in windows]
    nll, scored = sum(r.nll_sum for r in runs), sum(r.num_scored for r in runs)
    passes = [p for r in runs for p in r.quality_passes]
    return (math.exp(nll / scored), float(np.mean([r.kv_saved_frac for r in runs])),
            attention_mix(passes), charged_mix(passes), Chunks.of(passes))


def check_variants(runs_cfg, setups: dict, base_dir: Path, text: str, num_windows: int,
                   context: int, budget_frac: float | None = None,
                   on_done: Callable[[str], None] | None = None) -> tuple[float, list[QualityRow]]:
    """Score every variant (and FP16 once, the baseline) -> (FP16 perplexity, one row per
    variant).  The variants share the first one's model, text and store settings."""
    from adapters.model.loading import load_shared, resolve_dtype, resolve_spec
    from adapters.model.text import text_source
    from sim.config.policy_registry import build as build_policy
    from sim.run.runner import run_scenario

    _, first = runs_cfg[0]
    be = first.backend
    model, tokenizer = load_shared(resolve_spec(first.model.spec, base_dir), "text", be.dtype,
                                   be.device)
    ids = tokenizer.encode(text_source(text))
    windows = text_windows(ids, num_windows, context, text)
    kv_dtype = resolve_dtype(be.kv_dtype)
    fp16 = build_policy("tiering", {"kind": "fp16"})
    base_ppl, _, _, _, base_chunks = score(model, windows, fp16, first, 1.0, kv_dtype)
    if on_done:
        on_done("fp16")
    rows = []
    for variant, scn in runs_cfg:
        frac = budget_frac or window_budget_frac(setups[variant], context)
        ppl, saved, mix, charged, chunks = score(model, windows, scn.policies.tiering, scn, frac,
                                                 kv_dtype)
        simulated = run_scenario(scn, variant, scn.cost_models[0], base_dir,
                                 setup=setups[variant])
        scale = base_ppl / scn.quality.base_ppl  # at this text's perplexity
        rows.append(QualityRow(variant, _policy_name(scn.policies.tiering), frac, ppl,
                               ppl - base_ppl, predict(charged, scn.quality) * scale,
                               simulated.metrics.get("quality", {}).get("delta_ppl_mean"),
                               saved, mix, measured_spread(base_chunks, chunks)))
        if on_done:
            on_done(variant)
    return base_ppl, rows


def _policy_name(policy) -> str:
    return getattr(policy, "name", None) or type(policy).__name__
