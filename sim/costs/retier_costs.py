"""How the ``calibrated`` cost model (``sim.costs.calibrated``) prices a step's re-tiering work:
the tier checks around the forward, the blocks quantized as they fill, and the blocks
re-quantized, copied to or from the host, or recomputed.  A mixin of ``CalibratedModel``: it
reads the model's profile (``self.p``), model (``self.model``), block size (``self.bt``),
per-value quantize prices (``self.quant_s``, from ``quantize_prices``; ``self.pass_s``, from
``pass_prices``), whether its forwards measure attention (``self.observing``) and the device
of the step (``self.device``)."""

from __future__ import annotations

import numpy as np

from policies import Precision
from sim.costs.cost_model import Segment
from sim.engine.executor import StepPlan

QUANTIZED = (Precision.INT8, Precision.INT4, Precision.INT2)


def quantize_prices(timed_s_per_value: dict[str, float]) -> np.ndarray:
    """Seconds a value to quantize, per precision of ``QUANTIZED``; one a profile lacks (a
    profile of calibration ``VERSION`` 16 or before timed INT2 only when its time budget
    reached the grid's last points) costs the mean of those it has, not nothing (measured:
    kivi's INT2 re-quantizing was predicted a third short at 0)."""
    timed = {p: timed_s_per_value.get(p.name.lower()) for p in QUANTIZED}
    known = [v for v in timed.values() if v]
    fallback = float(np.mean(known)) if known else 0.0
    return np.array([timed[p] or fallback for p in QUANTIZED])


def pass_prices(timed_s_per_value: dict[str, float], fill: np.ndarray) -> np.ndarray:
    """Seconds a value to quantize a block after the first of one tier check, per precision of
    ``QUANTIZED``; one a profile lacks (calibration ``VERSION`` 17 or before) costs a fill's."""
    return np.array([timed_s_per_value.get(p.name.lower()) or f for p, f in zip(QUANTIZED, fill)])


class RetierCosts:
    """The re-tiering prices of ``CalibratedModel`` (see the module's docstring)."""

    def _after_check_s(self, rows: int, grown: int, verify: bool = False) -> float:
        """The tier check after a step's forward over ``rows`` rows, ``grown`` of which have
        more full blocks than at the check before (the executor's record of them grows): its
        own prices after a verify pass (``verify``) and when the forward measured attention
        (``observing``), where the profile has them."""
        p = self.p
        first, nxt = p.retier_growth_s, p.retier_growth_s_per_next_row
        if verify and p.retier_verify_s_per_check is not None:
            check = p.retier_verify_s_per_check + (rows - 1) * p.retier_verify_s_per_next_row
        elif self.observing and p.retier_observed_s_per_check is not None:
            check = (p.retier_observed_s_per_check + rows * p.retier_observed_s_per_row
                     + (rows > 1) * p.retier_observed_s_multi_row)
            first, nxt = p.retier_observed_growth_s, p.retier_observed_growth_s_per_next_row
        else:
            check = self._tier_check_s(rows)
        return check + (grown > 0) * first + max(grown - 1, 0) * nxt

    def _tier_check_s(self, rows: int, warm: bool = False) -> float:
        if warm:
            return (self.p.retier_warm_s_per_check + rows * self.p.retier_warm_s_per_row
                    + (rows > 1) * self.p.retier_warm_s_multi_row)
        return (self.p.retier_s_per_check + rows * self.p.retier_s_per_row
                + (rows > 1) * self.p.retier_s_multi_row)

    def _fill_segment(self, plan: StepPlan, tokens: np.ndarray, before: np.ndarray,
                      after: np.ndarray) -> Segment:
        """Blocks that fill during the step are quantized at its end when their admitted
        precision is below FP16.  Prefill: the prompt's full blocks held below FP16.  Decode: a
        row that holds FP16 blocks fills its newest at FP16 (a policy that keeps some blocks at
        FP16 keeps the recent ones: kivi, ``progressive``; it demotes them later, a re-tiering
        move of its own), a row that holds none at its quantized precision (as ``split_rows``
        reads a row's last block)."""
        counts = np.asarray(plan.row_block_counts, dtype=np.int64).reshape(len(tokens), -1)
        filled = after // self.bt - before // self.bt
        by_precision = np.zeros(len(QUANTIZED))
        for row in np.flatnonzero(filled > 0).tolist():
            quant = counts[row, [int(p) for p in QUANTIZED]]
            if quant.sum() == 0:
                continue
            if plan.phase == "prefill":
                blocks = min(int(filled[row]), int(quant.sum()))
            elif counts[row, Precision.FP16] > 0:
                continue
            else:
                blocks = int(filled[row])
            j = int(np.argmax(quant))  # the row's quantized precision (one per row when admitted)
            by_precision[j] += blocks
        return Segment(self.device, "retier", 0.0, 0.0, self._quantizing_s(by_precision))

    def _quantizing_s(self, blocks: np.ndarray) -> float:
        """Seconds one tier check takes to quantize ``blocks[j]`` FP16 blocks to
        ``QUANTIZED[j]``: the first block of each precision at a fill's price (``quant_s``),
        every next one at a pass's (``pass_s``: the check's first quantizing pays what the next
        ones do not)."""
        first, rest = np.minimum(blocks, 1.0), np.maximum(blocks - 1.0, 0.0)
        values = self.model.kv_values_per_token * self.bt
        return float(values * (first @ self.quant_s + rest @ self.pass_s)
                     + blocks.sum() * self.p.retier_s_per_block)

    def _retier_segment(self, plan: StepPlan) -> Segment:
        """Re-quantizing (each value at the price of the precision it goes to; values a plan
        does not say the precision of, at the mean), host copies, the arena's shifts, and
        recomputing evicted blocks (a forward over them)."""
        bt_values = self.model.kv_values_per_token * self.bt
        into = np.asarray(plan.kv_requant_into, dtype=np.float64)
        unsaid = max(plan.kv_requant_values - float(into.sum()), 0.0)
        unsaid_blocks = unsaid / bt_values if bt_values else 0.0
        seconds = ((self._quantizing_s(into / bt_values) if bt_values else 0.0)
                   + unsaid * float(self.quant_s.mean())
                   + unsaid_blocks * self.p.retier_s_per_block
                   + plan.kv_copy_bytes / self.p.copy_bytes_per_s)
        if self.p.shift_bytes_per_s:  # the arena kept compact (``adapters.kv.paged``)
            seconds += (plan.kv_shift_bytes / self.p.shift_bytes_per_s
                        + plan.kv_shift_passes * self.p.shift_s_per_pass)
        if plan.kv_recompute_tokens:
            seconds += self.forward_s(self.model, self.model.num_layers,
                                      int(plan.kv_recompute_tokens), np.zeros(1),
                                      np.zeros((1, 3)), 0)
        return Segment(self.device, "retier", 0.0, 0.0, seconds)
