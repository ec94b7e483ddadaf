"""Fitting the quality model (sim/quality/model.py) to measured perplexity, and checking it on
runs it was not fitted to.

The model's form: delta_ppl = sum over blocks of weight_b x penalty(precision_b), averaged over
the passes that describe the scored text, weight_b being the block's attention share (its share
of the blocks at INT2: ``sim.quality.model.charged``).  It is linear in the penalties, so a run
reduces to its **charged mix**: the (scored-token-weighted mean) weight held at each precision,
``missing`` being offloaded + evicted.  With x_p the run's charged mix at int8 / int4 / int2 /
missing and penalty_fp16 = 0,

    delta_ppl(run) = sum_p x_p x penalty_p

and the penalties are fitted by non-negative least squares over the training runs' measured
delta-PPL.  Predictions are always made by ``sim.quality.model`` itself (``predict``), never by this
sum, so what is validated is the simulator's own code path.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from policies import Precision
from sim.config.scenario import Coefficient, QualityConfig
from sim.quality.model import charged, penalties, weighted_delta_ppl

MIX_NAMES = ("fp16", "int8", "int4", "int2", "missing")
FITTED = MIX_NAMES[1:]  # fp16 costs nothing by definition
# one pseudo-block per mix entry: how a run's mix goes through sim.quality.model
_MIX_PRECISIONS = np.array([Precision.FP16, Precision.INT8, Precision.INT4, Precision.INT2,
                            Precision.EVICTED], dtype=np.uint8)


@dataclass(frozen=True)
class QualityPass:
    """The KV state one scored chunk of text was predicted from, as the quality model sees it."""

    shares: np.ndarray  # each block's attention share, summing to 1 over all blocks (absent too)
    precisions: np.ndarray  # uint8 Precision per block
    num_scored: int  # tokens of the chunk that count in the perplexity
    nll_sum: float = 0.0  # nats, over those tokens (measured)


def _mix_index(precisions: np.ndarray) -> np.ndarray:
    """Position in MIX_NAMES of each block's precision (offloaded and evicted -> missing)."""
    return np.minimum(precisions.astype(np.int64), len(MIX_NAMES) - 1)


def attention_mix(passes: Iterable[QualityPass]) -> dict[str, float]:
    """Fraction of the attention mass at each precision, weighted by scored tokens per pass."""
    return _weighted_mix(passes, by_share=True)


def block_mix(passes: Iterable[QualityPass]) -> dict[str, float]:
    """Fraction of the blocks at each precision, weighted the same way."""
    return _weighted_mix(passes, by_share=False)


def charged_mix(passes: Iterable[QualityPass]) -> dict[str, float]:
    """What the quality model charges at each precision (``sim.quality.model.charged``: the
    attention share, the share of the blocks at INT2), weighted the same way."""
    return _weighted_mix(passes, by_share=None)


def charged_of(attention: dict[str, float], blocks: dict[str, float]) -> dict[str, float]:
    """The same from a run's two mixes (they hold it exactly: INT2 is charged by its blocks)."""
    return {**attention, "int2": blocks["int2"]}


def _weighted_mix(passes: Iterable[QualityPass], by_share: bool | None) -> dict[str, float]:
    """``by_share``: attention shares (True), uniform over blocks (False), charged (None)."""
    total = np.zeros(len(MIX_NAMES))
    weight = 0
    for p in passes:
        if p.num_scored == 0 or len(p.precisions) == 0:
            continue
        if by_share is None:
            mass = charged(p.shares, p.precisions)
        else:
            mass = p.shares if by_share else np.full(len(p.precisions),
                                                     1.0 / len(p.precisions))
        total += p.num_scored * np.bincount(_mix_index(p.precisions), weights=mass,
                                            minlength=len(MIX_NAMES))
        weight += p.num_scored
    mix = total / weight if weight else total
    return {name: float(v) for name, v in zip(MIX_NAMES, mix)}


def predict(mix: dict[str, float], cfg: QualityConfig) -> float:
    """What the simulator's quality model estimates for a run with this charged mix
    (``charged_mix``): its own ``weighted_delta_ppl`` over one pseudo-block per precision
    (exact, the model being linear in the charged weights)."""
    weights = np.array([mix[name] for name in MIX_NAMES])
    return weighted_delta_ppl(weights, _MIX_PRECISIONS, penalties(cfg))


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b||_2 subject to x >= 0, exactly, by trying every set of free variables
    (the solution is the unconstrained least squares on its own support): 2^n solves, for the
    n = 4 penalties here.  Among equal residuals the one with fewer free variables wins."""
    n = a.shape[1]
    best, best_res = np.zeros(n), float(np.sum(b ** 2))
    for k in range(1, n + 1):
        for support in itertools.combinations(range(n), k):
            cols = list(support)
            sol = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
            if np.any(sol < 0):
                continue
            x = np.zeros(n)
            x[cols] = sol
            res = float(np.sum((a @ x - b) ** 2))
            if res < best_res * (1 - 1e-12) - 1e-300:
                best, best_res = x, res
    return best


def fit_penalties(mixes: Sequence[dict[str, float]], measured_delta_ppl: Sequence[float],
                  fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Non-negative least-squares penalties (delta-PPL per unit of attention share) for int8,
    int4, int2 and missing, from runs' attention mixes and measured delta-PPL.  A precision no
    training run holds any attention at is unidentified and comes out 0.  ``fixed``: penalties
    taken as given (a prior's): their share of each run's delta-PPL is taken off before the
    others are fitted."""
    fixed = fixed or {}
    free = [name for name in FITTED if name not in fixed]
    if not free:
        return {k: float(v) for k, v in fixed.items()}
    a = np.array([[m[name] for name in free] for m in mixes], dtype=np.float64)
    b = np.asarray(measured_delta_ppl, dtype=np.float64) - np.array(
        [sum(m[name] * v for name, v in fixed.items()) for m in mixes], dtype=np.float64)
    x = nnls(a, b)
    return {**dict(zip(free, map(float, x))), **{k: float(v) for k, v in fixed.items()}}


def fitted_config(fit: dict[str, float], base_ppl: float, source: str) -> QualityConfig:
    def coef(value: float) -> Coefficient:
        return Coefficient(value=max(value, 1e-9), source=source)  # values must be > 0
    return QualityConfig(base_ppl=base_ppl, int8_delta_ppl=coef(fit["int8"]),
                         int4_delta_ppl=coef(fit["int4"]), int2_delta_ppl=coef(fit["int2"]),
                         missing_delta_ppl=coef(fit["missing"]))


def signed_relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured, as ``infer-os validate`` reports; nan when measured is
    0 (a relative error of a zero measurement means nothing)."""
    return (predicted - measured) / measured if measured else float("nan")


@dataclass(frozen=True)
class QualityRun:
    """One tiering policy's perplexity over some windows of text, as the fit sees it."""

    name: str
    ppl: float  # over every scored token of every window
    num_scored: int
    attention_mix: dict[str, float]
    block_mix: dict[str, float]

    @classmethod
    def of(cls, name: str, nll_sum: float, num_scored: int,
           passes: Sequence[QualityPass]) -> QualityRun:
        ppl = float(np.exp(nll_sum / num_scored)) if num_scored else float("nan")
        return cls(name, ppl, num_scored, attention_mix(passes), block_mix(passes))

    @property
    def charged_mix(self) -> dict[str, float]:
        return charged_of(self.attention_mix, self.block_mix)


@dataclass(frozen=True)
class Checked:
    """A run's measured delta-PPL beside what the quality model predicts for it."""

    name: str
    is_train: bool
    measured_delta_ppl: float
    predicted_delta_ppl: float  # fitted penalties, through sim.quality.model
    placeholder_delta_ppl: float  # the placeholder penalties (QualityConfig()), the same way

    @property
    def relative_error(self) -> float:
        return signed_relative_error(self.predicted_delta_ppl, self.measured_delta_ppl)


def fit_runs(runs: Sequence[QualityRun], base: QualityRun, train: Iterable[str],
             source: str, also: Sequence[tuple[Sequence[QualityRun], QualityRun]] = (),
             fixed: dict[str, float] | None = None) -> tuple[QualityConfig, list[Checked]]:
    """Fit on the runs named in ``train`` (delta-PPL against ``base``, the FP16 run) and check
    every run, trained on or held out.

    ``also``: other texts' (runs, FP16 run), whose ``train`` runs join the fit (a fit on a set
    of texts).  Their delta-PPL enters relative to their own base, scaled to ``base``'s
    perplexity (``delta x base.ppl / their_base.ppl``): the simulator reads a profile at its
    ``base_ppl`` and a text at another base scales the same way (``check_on``).  ``fixed``:
    penalties held at given values (per unit at ``base``'s perplexity), the rest fitted
    (``fit_penalties``)."""
    names = set(train)
    unknown = names - {r.name for r in runs}
    if unknown:
        raise ValueError(f"no run named {sorted(unknown)[0]!r} to train on")
    mixes, targets = [], []
    for text_runs, text_base in [(runs, base), *also]:
        scale = base.ppl / text_base.ppl
        for r in text_runs:
            if r.name in names:
                mixes.append(r.charged_mix)
                targets.append((r.ppl - text_base.ppl) * scale)
    fit = fit_penalties(mixes, targets, fixed)
    cfg = fitted_config(fit, base.ppl, source)
    placeholder = QualityConfig()
    checked = [Checked(r.name, r.name in names, r.ppl - base.ppl, predict(r.charged_mix, cfg),
                       predict(r.charged_mix, placeholder)) for r in runs]
    return cfg, checked
