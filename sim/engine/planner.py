"""Turns the engine's state into decided step plans: asks the four policies, validates their
decisions, and keeps what the speculation policy observes (``SpecSignals``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from policies import (
    OpEstimate,
    Placement,
    Precision,
)
from sim.config.model_spec import ModelSpec
from sim.config.policy_registry import BASELINE_KIND
from sim.engine.acceptance import Acceptance
from sim.engine.buffer_pool import BufferPool
from sim.engine.executor import StepPlan, StepResult
from sim.engine.kv_store import PagedKVStore
from sim.engine.policy_call import ask
from sim.engine.retier import Retierer
from sim.engine.spec_signals import SpecSignals
from sim.engine.workload import Requests
from sim.errors import InfeasibleDecision


class OpTimer(Protocol):
    """Predicts the alone time of one op group on one device, for the scheduling policy's
    estimates (a cost model provides it; the engine never imports one)."""

    def op_seconds(self, op: str, device: str, num_tokens: int, attended_pairs: float,
                   kv_read_bytes: float) -> float: ...


@dataclass(frozen=True, slots=True)
class PlannerLimits:
    """The engine settings the planner decides within."""

    max_draft_len: int
    tiering_interval_steps: int
    draft_device: str | None = None  # where the draft model runs (None: the decode FFN device)
    draft_source: str = "model"  # "ngram" drafts by prompt lookup: no draft model, no cost
    contiguous_kv: bool = False  # the batch's KV also lives in one buffer the buffer policy sizes


class Planner:
    """Contract: built complete (nothing is set on it afterwards); ``prefill_plan`` and
    ``decode_plan`` return plans that are never mutated; ``observe`` and ``record_acceptance``
    are the only writers of what the speculation policy sees."""

    def __init__(self, policies, model: ModelSpec, draft: ModelSpec | None, *,
                 limits: PlannerLimits, retierer: Retierer, acceptance: Acceptance,
                 estimator: OpTimer | None = None):
        self.tiering, self.buffers = policies.tiering, policies.buffers
        self.speculation, self.scheduling = policies.speculation, policies.scheduling
        self.model, self.draft, self.limits = model, draft, limits
        # The coefficient model's "enabled techniques": a family whose policy is not its plain
        # baseline; the GPU-NPU pipeline ("npu") is any scheduling policy but "single".
        self.techniques = frozenset(
            ("npu" if f == "scheduling" else f) for f, base in BASELINE_KIND.items()
            if getattr(policies, f).kind != base)
        self.retierer, self.acceptance, self.estimator = retierer, acceptance, estimator
        self.signals = SpecSignals()
        self.decode_steps = 0
        self._kv_values = model.kv_values_per_token  # (a property: computed once here)

    # -- tiering -----------------------------------------------------------------------------
    @property
    def new_block_precision(self) -> Precision:
        return self.retierer.new_block_precision

    def maybe_retier(self, store: PagedKVStore, running: list[int]) -> None:
        if self.decode_steps % self.limits.tiering_interval_steps == 0:
            self.retier(store, running)

    def retier(self, store: PagedKVStore, running: list[int]) -> None:
        """Ask the tiering policy and apply its decision, validating every change."""
        self.retierer.retier(store, running, self.decode_steps)

    def forget(self, rid: int) -> None:
        self.retierer.forget(rid)

    def replan(self, plan: StepPlan) -> None:
        """``plan`` never ran to the end (a device failed under it): the re-tiering work it was
        to pay is left for the next step."""
        self.retierer.pending.add(plan)

    # -- scheduling estimates ----------------------------------------------------------------
    def op_estimates(self, store: PagedKVStore, running: list[int], head_prompt: int,
                     devices: list[str]) -> tuple[OpEstimate, ...]:
        """Predicted alone time of the next step's ops on every device (roofline)."""
        if self.estimator is None:
            return ()
        b = len(running)
        tokens = float(store.req_tokens[running].sum()) if b else 0.0
        kv = float(store.req_counts[running].sum(axis=0) @ store.device_block_bytes) if b else 0.0
        prompt = max(head_prompt, 1)
        out = []
        for device in devices:
            out.append(OpEstimate("prefill", device, self.estimator.op_seconds(
                "prefill", device, prompt, prompt * (prompt + 1) / 2, 0.0)))
            for op in ("decode_attention", "decode_ffn"):
                out.append(OpEstimate(op, device, self.estimator.op_seconds(
                    op, device, max(b, 1), tokens, kv)))
        return tuple(out)

    # -- plans -------------------------------------------------------------------------------
    def _buffers(self, pool: BufferPool, num_tokens: int, num_rows: int,
                 kv_bytes: int = 0, kv_new_bytes: int = 0) -> tuple[int, int, int]:
        """Step buffers through the buffer policy: (allocations, bytes allocated, bytes copied).
        With ``contiguous_kv`` the batch's KV also lives in one growing buffer whose contents
        move on every reallocation (HF's concatenating cache, ORT outputs without IOBinding)."""
        a1, b1, _ = pool.request("logits", num_rows * self.model.vocab * 4)
        a2, b2, _ = pool.request("hidden", num_tokens * self.model.hidden * 2)
        if not (self.limits.contiguous_kv and kv_bytes):
            return a1 + a2, b1 + b2, 0
        a3, b3, copied = pool.request("kv_cache", kv_bytes + kv_new_bytes, kv_bytes)
        return a1 + a2 + a3, b1 + b2 + b3, copied

    def prefill_plan(self, batch: list[int], requests: Requests, store: PagedKVStore,
                     placement: Placement, pool: BufferPool,
                     prefill_tokens: np.ndarray | None = None) -> StepPlan:
        """``prefill_tokens``: per request, the tokens prefilled (default: the prompts; more for
        a request preempted for recompute)."""
        ids = np.array(batch, dtype=np.int64)
        rows = requests.prompt_tokens[ids] if prefill_tokens is None else prefill_tokens
        prompts = rows.astype(np.float64)
        num_tokens = int(prompts.sum())
        allocs, alloc_bytes, _ = self._buffers(pool, num_tokens, len(batch))
        # K/V of the prompt are written once; attention reads them from on-chip tiles
        return StepPlan(phase="prefill", request_ids=tuple(batch), num_tokens=num_tokens,
                        num_rows=len(batch),
                        attended_pairs=float((prompts * (prompts + 1) / 2).sum()),
                        kv_read_bytes=0.0, kv_dequant_values=0.0, placement=placement,
                        num_allocs=allocs, alloc_bytes=alloc_bytes, enabled=self.techniques,
                        row_tokens=rows,
                        row_block_counts=store.req_counts.take(ids, axis=0))

    def decode_plan(self, batch: np.ndarray, store: PagedKVStore, placement: Placement,
                    pool: BufferPool) -> tuple[StepPlan, np.ndarray]:
        """The step's plan and the tokens each sequence will emit (1 + accepted draft tokens)."""
        b = len(batch)
        k = self._draft_len(b)
        row_counts, row_tokens = store.req_counts.take(batch, axis=0), store.req_tokens[batch]
        counts = self.acceptance.ones(b) @ row_counts  # the column sums, faster than .sum
        kv_read = float(counts @ store.device_block_bytes)
        c = counts.tolist()
        tokens = float(np.add.reduce(row_tokens))
        absent = c[Precision.OFFLOADED] + c[Precision.EVICTED]
        resident_tokens = max(tokens - absent * store.block_tokens, 0.0)
        quantized = c[Precision.INT8] + c[Precision.INT4] + c[Precision.INT2]
        emitted = self._emitted(batch, k)
        rows = b * (k + 1)
        allocs, alloc_bytes, copied = self._buffers(pool, rows, rows, int(kv_read),
                                                    rows * self._kv_values * 2)
        draft_kv = tokens * self.draft.kv_values_per_token * 2 if k and self.draft else 0.0
        moves = self.retierer.pending.take()
        plan = StepPlan(
            phase="decode", request_ids=batch, num_tokens=rows, num_rows=rows,
            attended_pairs=resident_tokens * (k + 1), kv_read_bytes=kv_read,
            kv_dequant_values=float(quantized * store.block_tokens * self._kv_values),
            placement=placement, draft_len=k,
            draft_attended_pairs=tokens if k and self.draft else 0.0,
            draft_kv_read_bytes=draft_kv, num_allocs=allocs, alloc_bytes=alloc_bytes,
            buffer_copy_bytes=copied, enabled=self.techniques,
            tokens_per_seq=int(emitted.sum()) / b if k else 1.0,
            kv_copy_bytes=moves.copy_bytes, kv_requant_values=moves.requant_values,
            kv_recompute_tokens=moves.recompute_tokens, kv_requant_into=tuple(moves.requant_into),
            kv_shift_bytes=moves.shift_bytes, kv_shift_passes=moves.shift_passes,
            row_tokens=row_tokens, row_block_counts=row_counts)
        self.decode_steps += 1
        return plan, emitted

    # -- speculation -------------------------------------------------------------------------
    def _draft_len(self, batch_size: int) -> int:
        limit = self.limits.max_draft_len
        k = ask(self.speculation, "speculation",
                self.signals.observation(limit, batch_size)).draft_len
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= limit:
            raise InfeasibleDecision(f"speculation policy {self.speculation.kind!r}: draft length "
                                     f"{k!r} is not an integer in [0, {limit}]")
        if k and self.draft is None and self.limits.draft_source != "ngram":
            raise InfeasibleDecision(f"speculation policy {self.speculation.kind!r} drafts "
                                     "tokens but the scenario names no model.draft")
        return k

    def _emitted(self, batch: np.ndarray, k: int) -> np.ndarray:
        """Per sequence: 1 + the accepted prefix of k drafts (``Acceptance``); with a measuring
        executor, ones (its result replaces them)."""
        self.signals.decided(k)
        if k == 0 or self.acceptance.measured:
            return self.acceptance.ones(len(batch))
        accepted = self.acceptance.accepted(batch, k)
        proposed = self.acceptance.last_proposed  # a replayed proposal may hold fewer than k
        self.record_acceptance(np.full(len(batch), k) if proposed is None else proposed,
                               accepted)
        return accepted + 1

    def record_acceptance(self, proposed: np.ndarray, accepted: np.ndarray) -> None:
        """One step's outcome per sequence (``SpecSignals.record_acceptance``)."""
        self.signals.record_acceptance(proposed, accepted)

    def observe(self, plan: StepPlan, result: StepResult) -> None:
        """A decode step's costs for the speculation policy: verify = step time minus draft
        time; draft tokens per sequence are the measured ones where the executor reports them
        (prompt lookup may find fewer than k)."""
        if plan.phase != "decode":
            return
        draft_s = 0
        for _, op, seconds in result.segments:
            if op == "draft":
                draft_s += seconds
        k = float(plan.draft_len)
        if plan.draft_len and result.proposed is not None:
            k = float(np.mean(result.proposed))
        self.signals.record_costs(draft_s, result.elapsed_s - draft_s, k, plan.draft_len)
