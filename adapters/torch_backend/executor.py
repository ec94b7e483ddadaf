"""The torch executor: runs the engine's steps for real on our transformer and the paged KV store.

It implements the engine's executor protocol (``sim.engine.executor``): ``execute`` does the step's
work on the device, synchronises the device, reads ``time.perf_counter`` and advances the SimPy
clock by the measured time (the run is trace-driven).  What it reads from the engine: the request
ids of the step, the draft length the speculation policy chose, and the KV precision of every
block from the engine's store (the tiering policy's decisions), which it applies to its real
tensors before the step (the time to do so is the step's ``retier`` segment).  What it reports:
measured times per segment (``retier``, ``prefill``, ``draft``, ``decode``/``verify``), the tokens
each sequence emitted (1 + accepted drafts, measured), and the true bytes of its KV tensors by
precision; after the run, ``report()``: its device, measured step time and speculation counters.

Choices (recorded here, see also the README):
- Prefill runs one request at a time within a step (no padding waste); decode and verify run the
  whole batch in one forward, padded to the longest context with a per-row mask.
- Decoding is greedy and ignores EOS: every request emits exactly its scenario output length, as
  the simulator assumes (docs/architecture.md#the-validation-method).
- KV arenas grow through the scenario's buffer policy (``sim.engine.buffer_pool.BufferPool``
  deciding real allocations; a released arena is reused when the policy takes a buffer from its
  pool), and the logits of every step are written into a step buffer the same policy sizes and
  reuses (``adapters.torch_backend.tensor_pool``).
- A tiering policy that observes blocks sees attention measured in the model
  (``sim.quality.attention.MeasuredAttention``): each step, the attention probabilities of its query
  tokens averaged over layers and heads, summed per block (one extra q.K product per layer, paid
  only for such policies).
- Injected faults (``sim.engine.faults``) that can be made real: a slowed device (after the
  step's work, a sleep of (factor - 1) x its time, measured as a ``slow`` segment) and an
  allocation cap on the KV arenas (a request whose arena cannot grow within it fails with the
  reason, through ``StepFailed``; the step runs for the others).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import simpy
import torch

from adapters.kv import fused
from adapters.kv.paged import BITS, PagedKV
from adapters.kv.paged_step import PagedStep
from adapters.kv.segments import Segment, quantize_blocks
from adapters.model.transformer import Transformer, prefill
from adapters.torch_backend.faults import ArenaCapExceeded, InjectedFaults
from adapters.torch_backend.inputs import make_drafter, make_prompts
from adapters.torch_backend.tensor_pool import TensorPool
from sim.config.hardware import HardwareProfile
from sim.config.policy_registry import observes_blocks
from sim.config.scenario import Scenario
from sim.engine.buffer_pool import BufferPool
from sim.engine.executor import (
    Capabilities,
    DeviceInfo,
    ExecutorReport,
    StepPlan,
    StepResult,
    profile_device,
)
from sim.engine.faults import FaultSchedule, StepFailed
from sim.engine.kv_store import PagedKVStore
from sim.engine.workload import Requests
from sim.quality.attention import MeasuredAttention

FREE_ARENAS = 8  # released KV arenas kept for reuse


class TorchExecutor(InjectedFaults):
    """The engine's executor protocol over our transformer in torch.  The ONNX Runtime executor
    (``adapters.ort_backend.executor``) is this class with ``forward`` replaced."""

    name = "torch"
    sampler = None  # greedy; a server sets per-request sampling (adapters.serving.sampling)
    capabilities = Capabilities(measures_acceptance=True, reports_kv_bytes=True,
                                is_measured=True)

    def __init__(self, model: Transformer, prompts: list[list[int]], store: PagedKVStore,
                 device_info: DeviceInfo, *, kv_dtype: torch.dtype, group: int,
                 buffers: BufferPool, drafter: Any = None, device_label: str = "cpu",
                 measure_attention: bool = False, faults: FaultSchedule | None = None):
        self.model, self.prompts, self.store = model, prompts, store
        self.info, self.device_label = device_info, device_label
        w = model.tok_embeddings.weight
        self.device, self.dtype = w.device, w.dtype
        cfg = model.cfg
        self.pool = buffers
        self.step_buffers = TensorPool(buffers, self.device)  # the logits buffer, for real
        self.kv = PagedKV(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                          head_dim=cfg.head_dim, block_tokens=store.block_tokens, group=group,
                          dtype=kv_dtype, device=self.device, grow=self._grow,
                          reuse=self._reuse_arena)
        self._token_bytes = self.kv.token_bytes()
        self._free: deque[torch.Tensor] = deque(maxlen=FREE_ARENAS)
        self.drafter = drafter
        self.tokens: dict[int, list[int]] = {}
        self.finished: dict[int, list[int]] = {}  # prompt + output ids of ended requests
        self._actual: dict[int, np.ndarray] = {}  # per request: precision applied per block
        self.steps_s = 0.0  # sum of measured step times
        self.draft_work: tuple[int, int, int] | None = None  # set by each decode step
        # draft tokens accepted, proposals cut short by a rejection, and draft requests that
        # got no proposal (an n-gram with no match): the per-token acceptance probability is
        # accepted / (accepted + rejections + empty)
        self.draft_accepted = self.draft_rejections = self.draft_empty = 0
        self.accepted_log: dict[int, list[int]] = {}  # per request: accepted per proposal
        # and the drafts each proposal held (an n-gram may find fewer than k, or none)
        self.proposed_log: dict[int, list[int]] = {}
        # what the tiering policy observes: attention measured in the model, per block
        self.attention = MeasuredAttention() if measure_attention else None
        self.faults = faults if faults else None  # injected: a slowdown, an allocation cap
        self._clock_s = 0.0  # the engine clock when the current step started

    # -- protocol ------------------------------------------------------------------------------
    def devices(self) -> tuple[DeviceInfo, ...]:
        return (self.info,)

    def execute(self, env: simpy.Environment,
                plan: StepPlan) -> Generator[simpy.Event, Any, StepResult]:
        rids = [int(r) for r in plan.request_ids]
        segments: list[tuple[str, str, float]] = []
        self._clock_s = env.now
        failed: dict[int, str] = {}  # requests whose KV arena could not grow (injected cap)
        t0 = self._now()
        emitted = proposed = None
        with torch.inference_mode():
            if plan.phase == "prefill":
                for rid in rids:
                    try:
                        self.prefill_request(rid)
                    except ArenaCapExceeded as err:
                        failed[rid] = str(err)
                rids = [r for r in rids if r not in failed]
                t1 = self._now()
                segments.append((self.info.name, "prefill", t1 - t0))
                self._apply_tiers(rids)  # new blocks at the precision they were admitted at
                segments.append((self.info.name, "retier", self._now() - t1))
            else:  # each segment times its own work (the glue between counts in the step)
                tw = self._now()
                self._apply_tiers(rids)
                t1 = self._now()
                if t1 > tw:
                    segments.append((self.info.name, "retier", t1 - tw))
                step_rids = self._reserve(rids, plan.draft_len + 1 if plan.draft_len else 1,
                                          failed)
                emitted, proposed = (self.decode_step(step_rids, plan.draft_len, segments, t1)
                                     if step_rids else (np.ones(0, dtype=np.int64), None))
                if failed:  # rows for every request of the plan (the failed ones ignored)
                    emitted, proposed = self._all_rows(rids, step_rids, emitted, proposed)
                t2 = self._now()
                self._apply_tiers(step_rids)  # blocks that filled in this step, at once
                t3 = self._now()
                if t3 > t2:  # the calibrated model prices both checks (``retier_*_s_per_*``)
                    segments.append((self.info.name, "retier", t3 - t2))
        self._slow_down(env.now, t0, segments)
        elapsed = self._now() - t0
        self.steps_s += elapsed
        yield env.timeout(elapsed)
        result = StepResult(elapsed, {self.info.name: elapsed}, segments, emitted, proposed,
                            self.kv.bytes_by_precision(), self.kv.fp16_equiv_bytes(),
                            *(self.draft_work if plan.draft_len and self.draft_work else ()))
        if failed:
            raise StepFailed(failed, result)
        return result

    def release(self, request_id: int) -> None:
        """Free what an ended request holds (its KV arena back to the buffer policy); keep its
        tokens in ``finished``."""
        rid = request_id
        if rid in self.kv:
            self._free.append(self.kv.requests[rid].arena)
            self.kv.free(rid)
        name = f"kv{rid}"
        self.pool.release(name)
        if rid in self.tokens:
            self.finished[rid] = self.tokens.pop(rid)
        self._actual.pop(rid, None)
        if self.drafter is not None:
            self.drafter.forget(rid)

    def report(self) -> ExecutorReport:
        """Its device, the sum of its measured step times and its speculation counters."""
        return ExecutorReport(self.device_label, self.steps_s, self.draft_accepted,
                              self.draft_rejections, self.draft_empty,
                              {rid: list(log) for rid, log in self.accepted_log.items()},
                              {rid: list(log) for rid, log in self.proposed_log.items()})

    def warm_up(self, *, batch: int, past_tokens: int, new_tokens: int,
                prompt_tokens: int) -> None:
        """Prepare for steps up to these shapes before any is measured: each quantized
        precision's quantizing and dequantizing runs once on a random block outside the store
        (a process's first call of each costs more than the next: the first INT4 block quantized
        took 7.2 ms, the next ones 2.2-3.0, so the first block a run filled was predicted 40 %
        short), and the fused KV kernel is loaded.  The buffers grow through the buffer
        policy, as the run measures; the ONNX Runtime executor also grows its sessions' memory
        arenas."""
        kv = self.kv
        if self.device.type == "cpu":
            fused.available()  # the fused KV kernel, built or loaded from its cache once
        gen = torch.Generator(device=self.device).manual_seed(0)
        block = torch.randn((1, kv.L, 2, kv.K, kv.bt, kv.D), generator=gen,
                            device=self.device).to(kv.dtype)
        with torch.inference_mode():
            for bits in BITS.values():
                seg = Segment()
                seg.append([0], quantize_blocks(block, bits, kv.group))
                kv._dequant_layer(seg, bits, 0, kv.dtype)

    # -- steps -----------------------------------------------------------------------------
    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _positions(self, rids: list[int], num_new: int) -> torch.Tensor:
        start = torch.tensor([self.kv.num_tokens(r) for r in rids], device=self.device)
        return start[:, None] + torch.arange(num_new, device=self.device)[None, :]  # [B, T]

    def prefill_request(self, rid: int) -> None:
        """Prefill request ``rid``'s prompt (``prompts[rid]``) into the paged store and emit its
        first token (greedy)."""
        prompt = self.prompts[rid]
        self.kv.add(rid, capacity_tokens=len(prompt) + 1)
        logits, step = self.forward([rid], [prompt], last_only=True)  # head on the last token
        step.commit()
        first = int(logits[0, -1].argmax()) if self.sampler is None else \
            self.sampler.first(rid, logits[0, -1])
        self.tokens[rid] = [*prompt, first]
        self._actual[rid] = np.zeros(0, dtype=np.uint8)
        if self.drafter is not None:
            self.drafter.prefill(rid, self.tokens[rid])

    def decode_step(self, rids: list[int], k: int, segments: list, t0: float
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One decode step of ``rids`` (``k`` > 0: draft k tokens per request, then verify them
        in one pass), timed from ``t0`` (a draft from its lookups' start, the pass from their
        end); its segments are appended to ``segments`` ->
        (tokens emitted per request, draft tokens proposed per request or None)."""
        name = self.info.name
        drafts: list[list[int]] = []
        self.draft_work = None  # n-gram lookups' work (``StepResult.draft_scan_tokens`` on)
        if k:
            work = []
            t0 = self._now()
            for rid in rids:
                d, _ = self.drafter.propose(rid, self.tokens[rid], k)
                drafts.append(list(d)[:k])
                work.append([getattr(self.drafter, a, None) for a in ("scanned", "compared")])
            t1 = self._now()
            if all(w[0] is not None for w in work):  # and the rows that found an n-gram
                self.draft_work = (*(int(sum(x)) for x in zip(*work)), sum(map(bool, drafts)))
            segments.append((name, "draft", t1 - t0))
            t0 = t1
        T = k + 1 if k else 1
        rows = [[self.tokens[rid][-1], *d, *[0] * (T - 1 - len(d))]
                for rid, d in zip(rids, drafts or [[]] * len(rids))]
        logits, step = self.forward(rids, rows)
        target = logits.argmax(dim=-1).tolist() if self.sampler is None else None  # greedy
        kept, emitted = [], []
        for b, rid in enumerate(rids):
            d = drafts[b] if k else []
            if target is None:  # a server's per-request sampling (rejection sampling drafts)
                a, token = self.sampler.accept(rid, d, logits[b])
            else:
                a = 0
                while a < len(d) and d[a] == target[b][a]:
                    a += 1
                token = target[b][a]
            if k:  # the draft source saw tokens + d; only tokens + d[:a] survived
                self.drafter.rollback(rid, len(self.tokens[rid]) + a)
            self.tokens[rid].extend([*d[:a], token])
            self.draft_accepted += a
            self.draft_rejections += 0 < len(d) and a < len(d)
            self.draft_empty += k > 0 and not d
            if k:
                self.accepted_log.setdefault(rid, []).append(a)
                self.proposed_log.setdefault(rid, []).append(len(d))
            kept.append(1 + a)  # the fed token and the accepted drafts keep their K/V
            emitted.append(1 + a)
        step.commit(kept)
        segments.append((name, "verify" if k else "decode", self._now() - t0))
        proposed = np.array([len(d) for d in drafts], dtype=np.int64) if k else None
        return np.array(emitted, dtype=np.int64), proposed

    def forward(self, rids: list[int], rows: list[list[int]], last_only: bool = False,
                num_layers: int | None = None) -> tuple[torch.Tensor, PagedStep]:
        """New tokens ``rows`` [B][T] of ``rids`` through the model over their stored K/V ->
        (logits [B, T, V], or [B, 1, V] of the last position with ``last_only``; the step).
        The new K/V are written; ``step.commit(kept)`` accounts them.  ``num_layers``: the first
        n layers only (a layer-skip pass).  The seam a backend replaces (the ONNX Runtime
        executor runs it in a session); the step it returns has ``commit(kept)`` and
        ``block_shares(num_layers)``."""
        T = len(rows[0])
        ids = torch.tensor(rows, device=self.device)  # [B, T]
        step = self._step(rids, T)
        hidden = self.model.hidden_states(ids, step, self._positions(rids, T), num_layers)
        self._record_attention(step)
        return self._logits(hidden[:, -1:] if last_only else hidden), step

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, E] -> logits [B, T, V], written into the step's "logits" buffer (sized
        and reused by the buffer policy)."""
        B, T, E = hidden.shape
        head = self.model.output.weight  # [V, E]
        out = self.step_buffers.get("logits", (B * T, head.shape[0]), hidden.dtype)
        torch.matmul(self.model.norm(hidden).reshape(B * T, E), head.t(), out=out)
        return out.view(B, T, -1)

    def _step(self, rids: list[int], num_new: int) -> PagedStep:
        return PagedStep(self.kv, rids, num_new, self.dtype,
                         measure_attention=self.attention is not None)

    def _record_attention(self, step: PagedStep) -> None:
        if self.attention is None:
            return
        for rid, shares in zip(step.rids, step.block_shares(self.model.cfg.num_layers)):
            self.attention.record(rid, shares.numpy())

    # -- tiers -----------------------------------------------------------------------------
    def _apply_tiers(self, rids: list[int]) -> None:
        """Make each block's real precision what the engine's store says (full blocks only),
        keeping FP16 host copies where it keeps them (``backups_raw``)."""
        for rid in rids:
            desired = np.frombuffer(bytes(self.store.blocks_raw(rid)), dtype=np.uint8)
            full = self.kv.num_tokens(rid) // self.kv.bt
            actual = self._actual[rid]
            if len(actual) < full:
                actual = self._actual[rid] = np.concatenate(
                    [actual, np.zeros(full - len(actual), dtype=np.uint8)])
            n = min(full, len(desired))
            changed = np.flatnonzero(desired[:n] != actual[:n])
            if len(changed):  # blocks bound for one quantized tier go in one pass
                future, at = self.store.reservation(rid)
                if at in BITS and at not in self.kv.requests[rid].segments:
                    # its segment there, made with room for what the engine reserved (read only
                    # when the segment is made: nothing to do once it exists)
                    self.kv.expect_blocks(rid, at, int(np.count_nonzero(desired == at)) + future)
                backups = self.store.backups_raw(rid)
                moved = self.kv.set_precisions(rid, changed.tolist(), desired[changed].tolist(),
                                               self._recompute, [bool(backups[b]) for b in changed])
                actual[moved] = desired[moved]

    def _recompute(self, rid: int, block: int) -> torch.Tensor:
        """K/V of one evicted block, recomputed exactly: the prefix up to its end, forwarded
        through a scratch cache.  -> [L, 2, K, bt, D]."""
        bt = self.kv.bt
        end = (block + 1) * bt
        cache = self.model.new_cache(1, end)
        prefill(self.model, torch.tensor([self.tokens[rid][:end]], device=self.device), cache)
        s = slice(block * bt, end)
        return torch.stack([cache.k[:, 0, :, s], cache.v[:, 0, :, s]], dim=1)

    # -- KV arenas through the buffer policy ------------------------------------------------
    def _grow(self, rid: int, need_tokens: int, cap_tokens: int) -> int:
        tb = self._token_bytes
        self._check_cap(rid, need_tokens * tb)
        live = self.kv.arena_tokens(rid) * tb if rid in self.kv else 0
        self.pool.request(f"kv{rid}", need_tokens * tb, live)
        return max(self.pool.held[f"kv{rid}"] // tb, need_tokens)

    def _reuse_arena(self, capacity: int) -> torch.Tensor | None:
        """A released arena of exactly this capacity (the buffer policy reused its size)."""
        for i, t in enumerate(self._free):
            if t.shape[3] == capacity:
                del self._free[i]
                return t
        return None


# -- building one from a scenario ------------------------------------------------------------------
def create(scn: Scenario, hw: HardwareProfile, requests: Requests, store: PagedKVStore,
           base_dir: Path, buffers: BufferPool) -> TorchExecutor:
    """The executor for one run of ``scn``: model, prompts, drafter, device."""
    from adapters.model.loading import (
        describe_device,
        load_shared,
        resolve_device,
        resolve_dtype,
        resolve_spec,
    )

    be = scn.backend
    device = resolve_device(be.device)
    if be.threads:
        torch.set_num_threads(be.threads)
    spec = resolve_spec(scn.model.spec, base_dir)
    model, tokenizer = load_shared(spec, scn.workload.prompt_text, be.dtype, be.device)
    prompts = make_prompts(scn, requests, tokenizer, model.cfg.vocab)
    kind = "gpu" if device.type == "cuda" else "cpu"
    info = profile_device(hw, kind)
    kv_dtype = resolve_dtype(be.kv_dtype)
    drafter = make_drafter(scn, model, base_dir, be.dtype, be.device)
    ex = TorchExecutor(model, prompts, store, info, kv_dtype=kv_dtype,
                       group=scn.engine.kv_quant_group, buffers=buffers, drafter=drafter,
                       device_label=describe_device(device),
                       measure_attention=observes_blocks(scn.policies.tiering),
                       faults=FaultSchedule(scn.faults))
    ex.tokenizer = tokenizer  # (None without one) for a server's text in and out
    ex.warm_up(batch=scn.engine.max_batch, past_tokens=0, new_tokens=1, prompt_tokens=0)
    return ex
