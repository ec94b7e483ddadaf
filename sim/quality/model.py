"""The simulator's quality model: the precision mix of the KV cache -> an estimated perplexity
change, weighted by where attention goes.

    delta_ppl = mean over requests of  sum_b weight_b x penalty(precision_b)

weight_b is the block's attention share, except at INT2, where it is the block's share of the
blocks (1 / blocks): 2-bit keys perturb every block's attention logit, so the blocks that drew
little attention can draw it now, and the damage follows how many blocks are at INT2, not the
attention they drew.  Measured (docs/validation.md, "How much a measured ΔPPL moves"): kivi
(old blocks at INT2, the sink among them) costs 87 % of all-INT2's perplexity with 58 % of the
attention at INT2 (78 % of the blocks); charged by attention it was under-predicted by a third
on both plays, by blocks within 10 %.  At INT4 and INT8 the attention share holds (mikv, INT4 on
the blocks that draw little, costs what its attention share says).  penalty(p) is the
perplexity change if the whole cache were held at p (and, for offloaded or evicted blocks, per
unit of attention mass the model can no longer see).  The default penalties
are placeholders from the literature (cited in ``QualityConfig``), to be fitted from real
perplexity runs by the validation work; quality = 100 x PPL_base / (PPL_base + delta_ppl).
"""

from __future__ import annotations

import numpy as np

from policies import Precision
from sim.config.scenario import QualityConfig


def penalties(cfg: QualityConfig) -> np.ndarray:
    out = np.zeros(len(Precision))
    out[Precision.INT8] = cfg.int8_delta_ppl.value
    out[Precision.INT4] = cfg.int4_delta_ppl.value
    out[Precision.INT2] = cfg.int2_delta_ppl.value
    out[Precision.OFFLOADED] = cfg.missing_delta_ppl.value
    out[Precision.EVICTED] = cfg.missing_delta_ppl.value
    return out


def charged(shares: np.ndarray, precisions: np.ndarray) -> np.ndarray:
    """Each block's weight in the estimate: its attention share, or 1 / blocks at INT2."""
    return np.where(precisions == Precision.INT2, 1.0 / max(len(shares), 1), shares)


def weighted_delta_ppl(weights: np.ndarray, precisions: np.ndarray, table: np.ndarray) -> float:
    """sum_b weight_b x penalty(precision_b), the weights already charged."""
    return float(weights @ table[precisions]) if len(weights) else 0.0


def request_delta_ppl(shares: np.ndarray, precisions: np.ndarray, table: np.ndarray) -> float:
    """``shares``: each block's attention share (over all blocks, resident or not)."""
    return weighted_delta_ppl(charged(shares, precisions), precisions, table)


def quality_pct(base_ppl: float, delta_ppl: float) -> float:
    return 100.0 * base_ppl / (base_ppl + max(delta_ppl, 0.0))


def quality_metrics(samples: list[float], base_ppl: float) -> dict:
    """The estimate at every re-tiering pass, summarised; quality from the mean."""
    if not samples:
        return {"delta_ppl_mean": 0.0, "delta_ppl_max": 0.0, "quality_pct": 100.0}
    mean = float(np.mean(samples))
    return {"delta_ppl_mean": float(f"{mean:.12g}"),
            "delta_ppl_max": float(f"{max(samples):.12g}"),
            "quality_pct": float(f"{quality_pct(base_ppl, mean):.12g}")}
