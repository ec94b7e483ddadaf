"""Turns the engine's state into decided step plans: asks the four policies, validates their
decisions, keeps the statistics they observe (acceptance EWMA and history, step-cost EWMAs) and
draws speculative acceptance."""

from __future__ import annotations

from collections import deque

import numpy as np

from policies import (
    OpEstimate,
    Placement,
    Precision,
    SpecObservation,
)
from sim.buffer_pool import BufferPool
from sim.cost_model import RooflineModel
from sim.errors import InfeasibleDecision
from sim.executor import StepPlan, StepResult
from sim.kv_store import PagedKVStore
from sim.model_spec import ModelSpec
from sim.policy_registry import BASELINE_KIND
from sim.retier import Retierer
from sim.workload import Requests

EWMA_WEIGHT = 0.2  # weight of the newest sample in every EWMA the planner keeps
HISTORY_LEN = 32


class Planner:
    def __init__(self, policies, model: ModelSpec, draft: ModelSpec | None, *,
                 alpha: float, draft_device: str | None, max_draft_len: int,
                 tiering_interval_steps: int, device_kinds: dict[str, str],
                 retierer: Retierer, estimator: RooflineModel | None = None,
                 contiguous_kv: bool = False, acceptance_trace: np.ndarray | None = None):
        self.tiering, self.buffers = policies.tiering, policies.buffers
        self.speculation, self.scheduling = policies.speculation, policies.scheduling
        self.model, self.draft, self.alpha, self.draft_device = model, draft, alpha, draft_device
        self.max_draft_len, self.interval = max_draft_len, tiering_interval_steps
        self.device_kinds = device_kinds
        # The coefficient model's "enabled techniques": a family whose policy is not its plain
        # baseline; the GPU-NPU pipeline ("npu") is any scheduling policy but "single".
        self.techniques = frozenset(
            ("npu" if f == "scheduling" else f) for f, base in BASELINE_KIND.items()
            if getattr(policies, f).kind != base)
        self.retierer = retierer
        self.estimator = estimator
        self.contiguous_kv = contiguous_kv
        self.acceptance_trace, self._trace_pos = acceptance_trace, 0
        self.acceptance_replay: dict[int, list[int]] | None = None
        self._replay_pos: dict[int, int] = {}
        self.decode_steps = 0
        self.acceptance = 0.0
        self.acceptance_history: deque[float] = deque(maxlen=HISTORY_LEN)
        self.last_k, self.last_all_accepted = 0, False
        self.steps_since_draft = 0
        self.draft_token_s = self.verify_s = 0.0
        self.plain_verify_s = self.verify_token_s = 0.0
        self.verify_token_known = False  # verify_token_s can be 0 once measured (flat verify)
        self.spec_proposed = self.spec_accepted = 0
        self._ones: dict[int, np.ndarray] = {}
        self.measured_acceptance = False  # set by the engine for an executor that measures it
        self.draft_source = "model"  # "ngram" drafts by prompt lookup: no draft model, no cost

    # -- tiering -----------------------------------------------------------------------------
    @property
    def new_block_precision(self) -> Precision:
        return self.retierer.new_block_precision

    def maybe_retier(self, store: PagedKVStore, running: list[int]) -> None:
        if self.decode_steps % self.interval == 0:
            self.retier(store, running)

    def retier(self, store: PagedKVStore, running: list[int]) -> None:
        """Ask the tiering policy and apply its decision, validating every change."""
        self.retierer.retier(store, running, self.decode_steps)

    def forget(self, rid: int) -> None:
        self.retierer.forget(rid)

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
        if not (self.contiguous_kv and kv_bytes):
            return a1 + a2, b1 + b2, 0
        a3, b3, copied = pool.request("kv_cache", kv_bytes + kv_new_bytes, kv_bytes)
        return a1 + a2 + a3, b1 + b2 + b3, copied

    def prefill_plan(self, batch: list[int], requests: Requests, store: PagedKVStore,
                     placement: Placement, pool: BufferPool) -> StepPlan:
        prompts = requests.prompt_tokens[batch].astype(np.float64)
        num_tokens = int(prompts.sum())
        allocs, alloc_bytes, _ = self._buffers(pool, num_tokens, len(batch))
        # K/V of the prompt are written once; attention reads them from on-chip tiles
        return StepPlan("prefill", tuple(batch), num_tokens, len(batch),
                        float((prompts * (prompts + 1) / 2).sum()), 0.0, 0.0, placement,
                        num_allocs=allocs, alloc_bytes=alloc_bytes,
                        enabled=self.techniques, row_tokens=requests.prompt_tokens[batch],
                        row_block_counts=store.req_counts[batch])

    def decode_plan(self, batch: np.ndarray, store: PagedKVStore, placement: Placement,
                    pool: BufferPool, rng: np.random.Generator) -> tuple[StepPlan, np.ndarray]:
        """The step's plan and the tokens each sequence will emit (1 + accepted draft tokens)."""
        b = len(batch)
        k = self._draft_len(b)
        row_counts = store.req_counts[batch]
        counts = row_counts.sum(axis=0)
        tokens = float(store.req_tokens[batch].sum())
        absent = int(counts[Precision.OFFLOADED] + counts[Precision.EVICTED])
        resident_tokens = max(tokens - absent * store.block_tokens, 0.0)
        quantized = int(counts[Precision.INT8] + counts[Precision.INT4] + counts[Precision.INT2])
        emitted = self._emitted(b, k, rng, batch)
        kv_read = float(counts @ store.device_block_bytes)
        allocs, alloc_bytes, copied = self._buffers(
            pool, b * (k + 1), b * (k + 1), int(kv_read),
            b * (k + 1) * self.model.kv_values_per_token * 2)
        draft_kv = tokens * self.draft.kv_values_per_token * 2 if k and self.draft else 0.0

        plan = StepPlan(
            "decode", batch, b * (k + 1), b * (k + 1),
            resident_tokens * (k + 1), kv_read,
            float(quantized * store.block_tokens * self.model.kv_values_per_token), placement,
            draft_len=k, draft_attended_pairs=tokens if k and self.draft else 0.0,
            draft_kv_read_bytes=draft_kv,
            num_allocs=allocs, alloc_bytes=alloc_bytes, enabled=self.techniques,
            tokens_per_seq=int(emitted.sum()) / b if k else 1.0,
            row_tokens=store.req_tokens[batch], row_block_counts=row_counts)
        plan.buffer_copy_bytes = copied
        plan.kv_copy_bytes, plan.kv_requant_values, plan.kv_recompute_tokens = (
            self.retierer.pending.take())
        self.decode_steps += 1
        return plan, emitted

    # -- speculation -------------------------------------------------------------------------
    def _draft_len(self, batch_size: int) -> int:
        verify_s = self.plain_verify_s if self.plain_verify_s > 0 else self.verify_s
        obs = SpecObservation(self.acceptance, tuple(self.acceptance_history), self.last_k,
                              self.last_all_accepted, self.draft_token_s, verify_s,
                              self.max_draft_len, batch_size, self.steps_since_draft,
                              self.verify_token_s)
        k = self.speculation.decide(obs).draft_len
        if not 0 <= k <= self.max_draft_len:
            raise InfeasibleDecision(f"speculation policy {self.speculation.kind!r}: draft length "
                                     f"{k} outside [0, {self.max_draft_len}]")
        if k and self.draft is None and self.draft_source != "ngram":
            raise InfeasibleDecision(f"speculation policy {self.speculation.kind!r} drafts "
                                     "tokens but the scenario names no model.draft")
        return k

    def _emitted(self, b: int, k: int, rng: np.random.Generator,
                 batch: np.ndarray | None = None) -> np.ndarray:
        """Per sequence: 1 + the accepted prefix of k drafts, each accepted with prob. alpha.
        With a measuring executor the draw is skipped (its result replaces these ones).  With
        ``acceptance_replay`` (validate: the accepted count of each measured proposal, per
        request, in order) a request's next recorded count is used while it lasts."""
        self.last_k = k
        self.steps_since_draft = 0 if k else self.steps_since_draft + 1
        if k == 0 or self.measured_acceptance:
            ones = self._ones.get(b)
            if ones is None:
                ones = self._ones[b] = np.ones(b, dtype=np.int64)
                ones.flags.writeable = False
            return ones
        if self.acceptance_replay is not None and batch is not None:
            accepted = self._replayed(batch, k, rng)
            self.record_acceptance(np.full(b, k), accepted)
            return accepted + 1
        if self.acceptance_trace is not None:
            idx = (self._trace_pos + np.arange(b * k)) % len(self.acceptance_trace)
            self._trace_pos = int((self._trace_pos + b * k) % len(self.acceptance_trace))
            accept = self.acceptance_trace[idx].reshape(b, k)
        else:
            accept = rng.random((b, k)) < self.alpha
        accepted = np.argmin(np.hstack([accept, np.zeros((b, 1), dtype=bool)]), axis=1)
        self.record_acceptance(np.full(b, k), accepted)
        return accepted + 1

    def _replayed(self, batch: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(len(batch), dtype=np.int64)
        for i, rid in enumerate(batch.tolist()):
            counts = self.acceptance_replay.get(rid, ())
            pos = self._replay_pos.get(rid, 0)
            if pos < len(counts):
                out[i] = min(counts[pos], k)
                self._replay_pos[rid] = pos + 1
            else:  # more proposals than were measured: draw
                accept = rng.random(k) < self.alpha
                out[i] = int(np.argmin(np.append(accept, False)))
        return out

    def record_acceptance(self, proposed: np.ndarray, accepted: np.ndarray) -> None:
        """Update the acceptance statistics from one step's outcome per sequence: ``proposed``
        draft tokens, of which the first ``accepted`` were kept.  A step that proposed nothing
        (prompt lookup found no match) says nothing about acceptance."""
        if not int(np.sum(proposed)):
            return
        # Per-token acceptance: accepted / (accepted + rejections), the estimate of alpha for a
        # geometric run cut at k (accepted / proposed would understate it for k > 1).
        num_accepted = int(accepted.sum())
        num_rejected = int((accepted < proposed).sum())
        self.spec_proposed += num_accepted + num_rejected
        self.spec_accepted += num_accepted
        frac = num_accepted / (num_accepted + num_rejected) if num_accepted + num_rejected else 1.0
        self.acceptance = frac if not self.acceptance_history else (
            (1 - EWMA_WEIGHT) * self.acceptance + EWMA_WEIGHT * frac)
        self.acceptance_history.append(frac)
        self.last_all_accepted = bool(num_rejected == 0)

    def observe(self, plan: StepPlan, result: StepResult) -> None:
        """Update the step-cost EWMAs the speculation policy sees (seconds; verify = step time
        minus draft time): ``verify_s``, every decode step; ``plain_verify_s``, steps that verified
        no draft (reported as the observation's ``verify_s`` once measured, ``verify_s`` before);
        ``draft_token_s``, draft seconds per draft token; ``verify_token_s``, a drafting step's
        verify seconds beyond ``plain_verify_s`` per draft token (0 until a plain step has been
        measured; a negative sample, noise, counts as 0).  Draft tokens per sequence are the
        measured ones where the executor reports them (prompt lookup may find fewer than k)."""
        if plan.phase != "decode":
            return
        draft_s = sum(s for _, op, s in result.segments if op == "draft")
        verify = result.elapsed_s - draft_s
        self.verify_s = ewma(self.verify_s, verify)
        k = float(plan.draft_len)
        if plan.draft_len and result.proposed is not None:
            k = float(np.mean(result.proposed))
        if k == 0:
            self.plain_verify_s = ewma(self.plain_verify_s, verify)
            return
        self.draft_token_s = ewma(self.draft_token_s, draft_s / k)
        if self.plain_verify_s > 0:
            extra = max(verify - self.plain_verify_s, 0.0) / k
            self.verify_token_s = ewma(self.verify_token_s, extra, self.verify_token_known)
            self.verify_token_known = True


def ewma(old: float, new: float, known: bool | None = None) -> float:
    """The planner's EWMA, the first sample taken as is; ``known`` says whether ``old`` holds a
    sample (default: ``old`` != 0, for quantities that are never 0 once measured)."""
    if not (old != 0 if known is None else known):
        return new
    return (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new
