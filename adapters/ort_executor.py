"""The ONNX Runtime executor: the engine's steps run for real on our transformer exported to ONNX
(``adapters.onnx_export``), on the CPU execution provider (``ort``) or, where this onnxruntime has
them, MIGraphX (``ort-migraphx``, AMD GPUs) or VitisAI (``ort-vitisai``, the Ryzen AI NPU).

It implements the executor protocol of ``sim.executor`` as ``adapters.torch_executor`` does:
``execute`` runs the step, reads ``time.perf_counter`` and advances the SimPy clock by the
measured time; results carry the emitted tokens and the true bytes of the resident K/V.

Choices (this first cut; see also the README):
- Plain greedy decoding, EOS ignored, so every request emits its scenario output length.  Only
  the FP tier of the KV (``backend.kv_dtype`` float16 or float32) and float32 weights: a tiering
  policy other than ``fp16`` is refused (``policies.tiering``), as is speculation
  (``policies.speculation``).
- The graph is exported with logits for the last position only (the head runs once per row).
- Prefill runs one request at a time with an empty past.  Decode runs the batch in one call: each
  sequence's K/V sits in a [L, B, K, S, D] layout padded to the longest, padding masked by the
  graph's ``attention_mask``; while the batch stays the same, the present K/V of one step is the
  past of the next (no copy).  When the batch changes, its rows are compacted and regathered.
- ``backend.ort_binding: true`` (default): inputs and outputs are bound through IOBinding to
  OrtValues wrapping host arrays that the scenario's buffer policy sizes and reuses
  (``adapters.array_pool``; the KV ping-pongs between two named buffers, ``ort_kv0`` and
  ``ort_kv1``, as the present of a step cannot overwrite its own past).  ``false``: plain
  ``session.run``, where ONNX Runtime allocates every output anew each step.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import simpy

from adapters.array_pool import ArrayPool
from policies import Precision
from sim.buffer_pool import BufferPool
from sim.config import Scenario
from sim.errors import BackendUnavailable, UserError
from sim.executor import DeviceInfo, StepPlan, StepResult, profile_device
from sim.hardware import HardwareProfile
from sim.kv_store import PagedKVStore
from sim.workload import Requests

CPU_EP = "CPUExecutionProvider"
KV_DTYPES = {"float16": np.float16, "float32": np.float32}


class OrtExecutor:
    measures_acceptance = True
    reports_kv_bytes = True

    def __init__(self, session: ort.InferenceSession, shape: tuple[int, int, int], vocab: int,
                 prompts: list[list[int]], device_info: DeviceInfo, *, kv_dtype: type,
                 buffers: BufferPool, use_binding: bool, name: str = "ort",
                 device_label: str = "cpu"):
        self.session, self.prompts, self.info = session, prompts, device_info
        self.name, self.device_label, self.use_binding = name, device_label, use_binding
        self.L, self.K, self.D = shape  # layers, KV heads, head dim
        self.vocab, self.kv_dtype = vocab, np.dtype(kv_dtype)
        self.pool = buffers
        self.arrays = ArrayPool(buffers)
        self.tokens: dict[int, list[int]] = {}
        self.finished: dict[int, list[int]] = {}
        self.rows: dict[int, np.ndarray] = {}  # compact K/V [2, L, K, n, D] outside the batch
        self.batch: tuple[int, ...] = ()  # the requests of the batched layout, in row order
        self.past: np.ndarray | None = None  # [2, L, B, K, S, D] of ``batch``
        self.slot_mask = np.zeros((0, 0), np.int64)  # [B, S], 1 where a slot holds a token
        self.side = 0  # which of ort_kv0 / ort_kv1 the next decode writes its present into
        self.steps_s = 0.0
        self.num_runs = 0

    # -- protocol ------------------------------------------------------------------------------
    def devices(self) -> tuple[DeviceInfo, ...]:
        return (self.info,)

    def execute(self, env: simpy.Environment,
                plan: StepPlan) -> Generator[simpy.Event, Any, StepResult]:
        rids = [int(r) for r in plan.request_ids]
        t0 = time.perf_counter()
        emitted = None
        if plan.phase == "prefill":
            for rid in rids:
                self._prefill(rid)
        else:
            emitted = self._decode(rids)
        elapsed = time.perf_counter() - t0
        self.steps_s += elapsed
        yield env.timeout(elapsed)
        segment = (self.info.name, plan.phase, elapsed)
        by_precision, fp16_equiv = self._kv_bytes()
        return StepResult(elapsed, {self.info.name: elapsed}, [segment], emitted, None,
                          by_precision, fp16_equiv)

    def release(self, rid: int) -> None:
        if rid in self.tokens:
            self.finished[rid] = self.tokens.pop(rid)
        self.rows.pop(rid, None)  # a row of the batched layout is dropped at the next regather

    # -- steps ---------------------------------------------------------------------------------
    def _prefill(self, rid: int) -> None:
        prompt = self.prompts[rid]
        T = len(prompt)
        empty = np.zeros((self.L, 1, self.K, 0, self.D), self.kv_dtype)
        feeds = {"input_ids": np.array([prompt], np.int64),
                 "positions": np.arange(T, dtype=np.int64)[None],
                 "attention_mask": np.ones((1, T), np.int64), "past_k": empty, "past_v": empty}
        logits, present = self._run(feeds, (2, self.L, 1, self.K, T, self.D), "ort_prefill_kv")
        self.rows[rid] = present[:, :, 0].copy()  # [2, L, K, T, D], out of the reused buffer
        self.tokens[rid] = [*prompt, int(logits[0, -1].argmax())]

    def _decode(self, rids: list[int]) -> np.ndarray:
        if tuple(rids) != self.batch:
            self._regather(rids)
        assert self.past is not None
        B, S = len(rids), self.past.shape[4]
        mask = np.concatenate([self.slot_mask, np.ones((B, 1), np.int64)], axis=1)  # [B, S + 1]
        feeds = {"input_ids": np.array([[self.tokens[r][-1]] for r in rids], np.int64),
                 "positions": np.array([[len(self.tokens[r]) - 1] for r in rids], np.int64),
                 "attention_mask": mask, "past_k": self.past[0], "past_v": self.past[1]}
        out_shape = (2, self.L, B, self.K, S + 1, self.D)
        logits, present = self._run(feeds, out_shape, f"ort_kv{self.side}")
        self.side ^= 1
        self.past, self.slot_mask = present, mask
        for b, rid in enumerate(rids):
            self.tokens[rid].append(int(logits[b, -1].argmax()))
        return np.ones(B, dtype=np.int64)

    def _regather(self, rids: list[int]) -> None:
        """Compact the old batch's live rows, then lay out ``rids`` padded to the longest."""
        if self.past is not None:
            for b, rid in enumerate(self.batch):
                if rid in self.tokens and rid not in self.rows:
                    slots = np.flatnonzero(self.slot_mask[b])
                    self.rows[rid] = self.past[:, :, b][:, :, :, slots]  # a copy: [2, L, K, n, D]
        S = max(self.rows[r].shape[3] for r in rids)
        shape = (2, self.L, len(rids), self.K, S, self.D)
        if self.use_binding:  # the past goes where the next step's present does not
            past = self.arrays.get(f"ort_kv{self.side ^ 1}", shape, self.kv_dtype)
        else:
            past = np.empty(shape, self.kv_dtype)
        mask = np.zeros((len(rids), S), np.int64)
        for b, rid in enumerate(rids):
            row = self.rows.pop(rid)
            n = row.shape[3]
            past[:, :, b, :, :n] = row
            past[:, :, b, :, n:] = 0
            mask[b, :n] = 1
        self.batch, self.past, self.slot_mask = tuple(rids), past, mask

    def _run(self, feeds: dict[str, np.ndarray], kv_shape: tuple[int, ...],
             kv_name: str) -> tuple[np.ndarray, np.ndarray]:
        """One session call -> (logits [B, 1, V] of the last position, present K/V
        [2, L, B, K, S, D])."""
        self.num_runs += 1
        if not self.use_binding:
            logits, k, v = self.session.run(None, feeds)
            return logits, np.stack([k, v])
        io = self.session.io_binding()
        for name, value in feeds.items():
            if name.startswith("past_"):  # already in a pooled KV buffer (or empty)
                bound = value
            else:
                bound = self.arrays.get(f"ort_{name}", value.shape, value.dtype)
                bound[...] = value
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(bound))
        B = feeds["input_ids"].shape[0]
        logits = self.arrays.get("ort_logits", (B, 1, self.vocab), np.float32)  # last position
        present = self.arrays.get(kv_name, kv_shape, self.kv_dtype)
        for name, arr in (("logits", logits), ("present_k", present[0]),
                          ("present_v", present[1])):
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
        self.session.run_with_iobinding(io)
        return logits, present

    def _kv_bytes(self) -> tuple[dict[str, int], int]:
        """True bytes of the resident K/V (tokens stored, not padding or spare capacity)."""
        num_tokens = sum(len(t) - 1 for t in self.tokens.values())  # the last has no K/V yet
        values = num_tokens * self.L * 2 * self.K * self.D
        out = {p.name.lower(): 0 for p in Precision}
        out["fp16"] = values * self.kv_dtype.itemsize  # the FP tier, at its real width
        return out, values * 2


# -- building one from a scenario ------------------------------------------------------------------
def _check_provider(provider: str, backend: str) -> None:
    available = ort.get_available_providers()
    if provider not in available:
        raise BackendUnavailable(
            f"backend {backend!r} needs the ONNX Runtime execution provider {provider}, which "
            f"onnxruntime {ort.__version__} here does not have (available: "
            f"{', '.join(available)}); install an onnxruntime build with it")


def _refuse_unsupported(scn: Scenario, provider: str) -> None:
    be, pol = scn.backend, scn.policies
    if provider == CPU_EP and be.device == "cuda":
        raise UserError("backend 'ort' runs on the CPU; for a GPU use --backend ort-migraphx "
                        "(AMD) or --backend torch", field="backend.device")
    if pol.tiering.kind != "fp16":
        raise UserError(f"tiering {pol.tiering.kind!r} is not supported by the ONNX Runtime "
                        "backends yet (only 'fp16'); use --backend torch", field="policies.tiering")
    if pol.speculation.kind != "off":
        raise UserError("speculation is not supported by the ONNX Runtime backends yet "
                        "(only 'off'); use --backend torch", field="policies.speculation")
    if be.dtype != "float32":
        raise UserError("the ONNX Runtime backends run float32 weights only", field="backend.dtype")
    if be.kv_dtype not in KV_DTYPES:
        raise UserError(f"KV dtype {be.kv_dtype!r} is not supported here (choose from "
                        f"{', '.join(KV_DTYPES)})", field="backend.kv_dtype")


def create(scn: Scenario, hw: HardwareProfile, requests: Requests, store: PagedKVStore,
           base_dir: Path, buffers: BufferPool, *, provider: str = CPU_EP,
           backend: str = "ort", device_kind: str = "cpu") -> OrtExecutor:
    """The executor for one run of ``scn``: exported model (cached), session, prompts."""
    _check_provider(provider, backend)
    _refuse_unsupported(scn, provider)
    import torch

    from adapters.onnx_export import export_onnx
    from adapters.torch_executor import _load, make_prompts

    spec = scn.model.spec
    if spec not in ("smollm2-135m",) and not Path(spec).exists() and (base_dir / spec).exists():
        spec = str(base_dir / spec)
    model, tokenizer = _load(spec, scn.workload.prompt_text, "float32", "cpu")
    prompts = make_prompts(scn, requests, tokenizer, model.cfg.vocab)
    kv_dtype = KV_DTYPES[scn.backend.kv_dtype]
    export = export_onnx(model, torch.float16 if kv_dtype == np.float16 else torch.float32,
                         all_logits=False)
    options = ort.SessionOptions()
    if scn.backend.threads:
        options.intra_op_num_threads = scn.backend.threads
    providers = [provider] if provider == CPU_EP else [provider, CPU_EP]
    session = ort.InferenceSession(str(export.path), options, providers=providers)
    info = profile_device(hw, device_kind)
    cfg = model.cfg
    return OrtExecutor(session, (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim), cfg.vocab,
                       prompts, info, kv_dtype=kv_dtype, buffers=buffers,
                       use_binding=scn.backend.ort_binding, name=backend,
                       device_label=f"onnxruntime {ort.__version__} {provider}")


def create_migraphx(scn, hw, requests, store, base_dir, buffers) -> OrtExecutor:
    """``ort-migraphx``: AMD GPUs through MIGraphX (needs an onnxruntime built with it)."""
    return create(scn, hw, requests, store, base_dir, buffers,
                  provider="MIGraphXExecutionProvider", backend="ort-migraphx", device_kind="gpu")


def create_vitisai(scn, hw, requests, store, base_dir, buffers) -> OrtExecutor:
    """``ort-vitisai``: the Ryzen AI NPU through VitisAI (needs AMD's Ryzen AI onnxruntime)."""
    return create(scn, hw, requests, store, base_dir, buffers,
                  provider="VitisAIExecutionProvider", backend="ort-vitisai", device_kind="npu")
