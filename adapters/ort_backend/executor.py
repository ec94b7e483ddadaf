"""The ONNX Runtime executor: the engine's steps run for real on our transformer exported to ONNX
(``adapters.ort_backend.export``), on the CPU execution provider (``ort``) or, where this
onnxruntime has them, MIGraphX (``ort-migraphx``, AMD GPUs) or VitisAI (``ort-vitisai``, the Ryzen
AI NPU).

It is the torch executor (``adapters.torch_backend.executor``) with one thing replaced: the forward
pass (``TorchExecutor.forward``).  Everything else is shared, so the two backends run the same
scenarios the same way: the paged KV store with a precision per block (``adapters.kv.paged``:
tiering policies, INT8/INT4/INT2 blocks, offload, eviction and restore), speculation (the draft
sources of ``adapters.decoding.drafting``; verify passes of k + 1 tokens), KV arenas grown through
the buffer policy, measured attention for tiering policies that observe blocks, and the
per-request accounting.

One forward (``forward``), per step:

1. **Stage the past.**  Each row's resident K/V is copied from the paged store into the graph's
   ``past_k``/``past_v`` ([L, B, K, P, D]; quantized blocks dequantized on the way, the layout
   ``PagedKV.layer_kv`` gives), padded to the longest row (``P``; with static shapes, to the
   provider's bucket), the padding zeroed and masked.
2. **Run** the session: logits of the rows that need them (``logit_rows``: the last position for
   prefill and decode, all k + 1 to verify drafts), the present K/V and, for tiering policies
   that observe blocks, the attention of the step's queries (an output of the graph).
3. **Store the new tokens**: their K/V, sliced from the present, are written to the paged store
   (the torch executor's model writes them there itself).

So a quantized tier saves memory between steps, as in the torch executor, but each step holds an
FP staging copy of its batch's past (and the present, past + new): ONNX Runtime's attention reads
dense FP tensors.  Its bytes are step buffers (``reserved`` by the buffer policy), not KV.

``backend.ort_binding: true`` (default): the staged past, the other inputs and every output are
bound through IOBinding to OrtValues over host arrays that the scenario's buffer policy sizes and
reuses (``adapters.ort_backend.array_pool``); ``false``: plain ``session.run``, where ONNX Runtime
allocates every output anew each step (and the past is staged into a fresh array).

Devices: ``ort`` has one session, on the CPU.  ``ort-migraphx`` and ``ort-vitisai`` have a session
on their accelerator and one on the CPU, so a scheduling policy can place prefill and decode on
either (the device name comes from the hardware profile); a decode step runs whole on its
attention block's device (one graph: attention and FFN cannot be split across sessions).
Draft models and layer-skip drafts run in torch on the CPU (the same weights); an evicted block
is recomputed in torch too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import simpy
import torch

from adapters.kv.paged import BITS
from adapters.ort_backend.array_pool import ArrayPool
from adapters.torch_backend.executor import TorchExecutor
from sim.config.hardware import HardwareProfile
from sim.config.policy_registry import observes_blocks
from sim.config.scenario import Scenario
from sim.engine.buffer_pool import BufferPool
from sim.engine.executor import DeviceInfo, StepPlan, StepResult, profile_device
from sim.engine.faults import FaultSchedule
from sim.engine.kv_store import PagedKVStore
from sim.engine.workload import Requests
from sim.errors import UserError

KV_DTYPES = {"float16": torch.float16, "float32": torch.float32}
DEQUANT_CHUNK = 1 << 18  # values dequantized per call when staging quantized blocks


class _OrtStep:
    """The step ``forward`` returns, as the torch executor's ``PagedStep`` does: ``commit``
    accounts the new tokens, ``block_shares`` maps the graph's measured attention to blocks."""

    def __init__(self, ex: OrtExecutor, rids: list[int], T: int, resident: list[int], P: int,
                 attention: np.ndarray | None):
        self.ex, self.rids, self.T, self.resident, self.P = ex, rids, T, resident, P
        self.attention = attention

    def commit(self, kept: list[int] | None = None) -> None:
        for b, rid in enumerate(self.rids):
            self.ex.kv.append(rid, self.T if kept is None else kept[b])

    def block_shares(self, num_layers: int) -> list[torch.Tensor]:
        assert self.attention is not None, "the graph was exported without attention"
        att = torch.from_numpy(self.attention).double() / num_layers  # [B, P + T]
        out = []
        for b, rid in enumerate(self.rids):
            probs = torch.cat([att[b, :self.resident[b]], att[b, self.P:self.P + self.T]])
            out.append(torch.bincount(self.ex.kv.key_blocks(rid, extra=self.T), weights=probs))
        return out


@dataclass(frozen=True)
class Shapes:
    """The shapes one device's session runs at.  A provider that compiles per input shape
    (MIGraphX; VitisAI) gets ``static`` ones: the past laid out at ``past(n)`` tokens (buckets,
    ``adapters.ort_backend.providers.static_tokens``), the batch padded to a power of two, new
    tokens to 1, a power of two up to 16 (verify passes), or ``past``'s buckets (prompts);
    padding is masked and its outputs dropped.  Otherwise every shape is the true one."""

    static: bool = False
    past: Callable[[int], int] = int  # the identity on token counts

    def batch(self, n: int) -> int:
        return 1 << (n - 1).bit_length() if self.static else n

    def new(self, n: int) -> int:
        if not self.static or n == 1:
            return n
        return 1 << (n - 1).bit_length() if n <= 16 else self.past(n)


class OrtExecutor(TorchExecutor):
    """The torch executor with ``forward`` run in ONNX Runtime sessions, one per device."""

    def __init__(self, model, sessions: dict[str, ort.InferenceSession],
                 infos: dict[str, DeviceInfo], prompts: list[list[int]], store: PagedKVStore, *,
                 kv_dtype: torch.dtype, group: int, buffers: BufferPool, drafter: Any = None,
                 use_binding: bool = True, name: str = "ort", device_label: str = "cpu",
                 measure_attention: bool = False,
                 shapes: dict[str, Shapes] | None = None, faults: FaultSchedule | None = None):
        first = next(iter(infos.values()))
        super().__init__(model, prompts, store, first, kv_dtype=kv_dtype, group=group,
                         buffers=buffers, drafter=drafter, device_label=device_label,
                         measure_attention=measure_attention, faults=faults)
        self.name, self.use_binding = name, use_binding
        self.shapes = shapes or {}  # per device (default: the true shapes)
        self.sessions, self.infos = sessions, infos
        self.session = sessions[first.name]
        self.np_kv = np.dtype(str(kv_dtype).removeprefix("torch."))
        self.arrays = ArrayPool(buffers)
        self.num_runs = 0
        self.runs_by_device = {d: 0 for d in sessions}

    def warm_up(self, *, batch: int, past_tokens: int, new_tokens: int,
                prompt_tokens: int) -> None:
        """Run every session once at the largest shapes the run will see: a prefill of
        ``prompt_tokens``, a step of ``batch`` rows feeding ``new_tokens`` over ``past_tokens``,
        then that step again through IOBinding over arrays sized as the scenario's buffer policy
        sizes them, from a scratch pool that is then dropped.  Outside any measured step, costs
        a long-running server pays once, not per request: ONNX Runtime's first run at a larger
        shape grows its memory arena (here +50-150 ms a shape), its first IOBinding run costs
        about 40 ms more than the next, and the first touch of memory this process never used
        cost 1.4 ms a MB on this machine (a VM), 0.1 ms a MB once used and freed (measured: the
        first decode step of ``validation-batched`` took 228 ms where the next took 46, 186 of
        them allocating the staging arrays).  The run's own pool starts empty, so the buffer
        policy's counters are the run's.  The torch executor's warm-up (quantizing) first."""
        super().warm_up(batch=batch, past_tokens=past_tokens, new_tokens=new_tokens,
                        prompt_tokens=prompt_tokens)
        c = self.model.cfg
        for device, session in self.sessions.items():
            sh = self.shapes.get(device, Shapes())
            B, P, T = sh.batch(batch), sh.past(past_tokens), sh.new(new_tokens)
            for b, p, t in ((1, 0, sh.new(prompt_tokens)), (B, P, T)):
                past = np.zeros((c.num_layers, b, c.num_kv_heads, p, c.head_dim), self.np_kv)
                session.run(None, self._warm_feeds(b, p, t, past, past))
            scratch = ArrayPool(BufferPool(self.arrays.buffers.policy))
            past = scratch.get("ort_past", (2, c.num_layers, B, c.num_kv_heads, P, c.head_dim),
                               self.np_kv)
            past[...] = 0
            self._run(self._warm_feeds(B, P, T, past[0], past[1]), B, P + T, scratch, session)

    @staticmethod
    def _warm_feeds(B: int, P: int, T: int, past_k: np.ndarray,
                    past_v: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": np.zeros((B, T), np.int64),
                "positions": np.broadcast_to(np.arange(P, P + T), (B, T)).copy(),
                "attention_mask": np.ones((B, P + T), np.int64), "past_k": past_k,
                "past_v": past_v, "logit_rows": np.arange(T, dtype=np.int64)}

    # -- protocol: the device of each phase ----------------------------------------------------
    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(self.infos.values())

    def execute(self, env: simpy.Environment,
                plan: StepPlan) -> Generator[simpy.Event, Any, StepResult]:
        p = plan.placement
        device = p.prefill if plan.phase == "prefill" else p.decode_attention
        self.info, self.session = self.infos[device], self.sessions[device]
        return (yield from super().execute(env, plan))

    # -- one forward through the session ---------------------------------------------------
    def forward(self, rids: list[int], rows: list[list[int]], last_only: bool = False,
                num_layers: int | None = None) -> tuple[torch.Tensor, _OrtStep]:
        """``TorchExecutor.forward`` through the device's session: stage the past, run, store
        the new tokens' K/V (see the module's docstring)."""
        if num_layers is not None:
            raise NotImplementedError("the ONNX graph runs every layer (layer-skip drafts run "
                                      "in torch)")
        kv, B, T = self.kv, len(rids), len(rows[0])
        for rid in rids:
            kv.reserve(rid, T)
        resident = [kv.resident_tokens(r) for r in rids]
        offsets = [kv.arena_tokens(r) for r in rids]
        sh = self.shapes.get(self.info.name) or Shapes()
        Bp, Tp, P = sh.batch(B), sh.new(T), sh.past(max(resident))
        past = self._buffer("ort_past", (2, kv.L, Bp, kv.K, P, kv.D), self.np_kv)
        mask = self._buffer("ort_attention_mask", (Bp, P + Tp), np.int64)
        self._stage(rids, resident, torch.from_numpy(past), mask)
        ids = np.zeros((Bp, Tp), np.int64)
        ids[:B, :T] = rows
        starts = np.zeros((Bp, 1), np.int64)
        starts[:B, 0] = [kv.num_tokens(r) for r in rids]
        positions = np.minimum(starts + np.arange(Tp), self.model.cfg.max_positions - 1)
        feeds = {"input_ids": ids, "positions": positions,  # padded tokens: any position
                 "attention_mask": mask, "past_k": past[0], "past_v": past[1],
                 "logit_rows": np.arange(T - 1 if last_only else 0, T, dtype=np.int64)}
        logits, present_k, present_v, attention = self._run(feeds, Bp, P + Tp)
        for i, present in enumerate((present_k, present_v)):
            new = torch.from_numpy(present[:, :, :, P:P + T])  # [L, Bp, K, T, D]: new tokens
            for b, rid in enumerate(rids):
                kv.requests[rid].arena[:, i, :, offsets[b]:offsets[b] + T] = new[:, b]
        step = _OrtStep(self, rids, T, resident, P, attention)
        self._record_attention(step)  # type: ignore[arg-type]
        return torch.from_numpy(logits[:B]), step

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if self.use_binding and 0 not in shape:  # an empty past (prefill) needs no buffer
            return self.arrays.get(name, shape, dtype)
        return np.empty(shape, dtype)

    def _stage(self, rids: list[int], resident: list[int], past: torch.Tensor,
               mask: np.ndarray) -> None:
        """Each row's resident K/V into ``past`` [2, L, B, K, P, D] (quantized blocks
        dequantized, ``layer_kv`` order), padding zeroed; ``mask`` [B, P + T]: 1 on resident
        and new slots."""
        P = past.shape[4]
        mask[:] = 0
        mask[:, P:] = 1  # the new tokens (padded ones too: they see only themselves and padding)
        past[:, :, len(rids):] = 0  # padded rows
        kv = self.kv
        for b, rid in enumerate(rids):
            n, r = resident[b], kv.requests[rid]
            at = 0
            for prec, seg in r.segments.items():
                m = len(seg.blocks) * kv.bt
                # a few layers at a time: transients of about DEQUANT_CHUNK values (larger ones
                # go to fresh memory pages every step, whose first touch costs more than this)
                step = max(1, DEQUANT_CHUNK // (m * kv.K * kv.D))
                for lo in range(0, kv.L, step):
                    hi = min(lo + step, kv.L)
                    for i, (data, scales, zeros) in enumerate((
                            (seg.k_data, seg.k_scales, seg.k_zeros),
                            (seg.v_data, seg.v_scales, seg.v_zeros))):
                        x = kv.dequant(data[:, lo:hi].transpose(0, 1).flatten(0, 1),
                                       scales[:, lo:hi].transpose(0, 1).flatten(0, 1),
                                       zeros[:, lo:hi].transpose(0, 1).flatten(0, 1),
                                       BITS[prec], i == 0)  # [K, layers * m, D], layer-major
                        past[i, lo:hi, b, :, at:at + m] = x.unflatten(1, (hi - lo, m)
                                                                       ).transpose(0, 1)
                at += m
            past[:, :, b, :, at:n] = r.arena[:, :, :, :n - at].transpose(0, 1)
            past[:, :, b, :, n:] = 0
            mask[b, :n] = 1

    def _run(self, feeds: dict[str, np.ndarray], B: int, S: int, arrays: ArrayPool | None = None,
             session: ort.InferenceSession | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One session call -> (logits [B, N, V], present K and V [L, B, K, S, D] each,
        attention [B, S] or None).  ``arrays``, ``session``: another pool and session than the
        step's (``warm_up``'s), a run that is not counted."""
        observe = self.attention is not None
        if arrays is None:
            self.num_runs += 1
            self.runs_by_device[self.info.name] += 1
        arrays, session = arrays or self.arrays, session or self.session
        if not self.use_binding:
            out = session.run(None, feeds)
            return out[0], out[1], out[2], out[3] if observe else None
        io = session.io_binding()
        for name, value in feeds.items():
            if name in ("past_k", "past_v", "attention_mask"):  # already in pooled buffers
                bound = value
            else:
                bound = arrays.get(f"ort_{name}", value.shape, value.dtype)
                bound[...] = value
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(bound))
        kv = self.kv
        N = feeds["logit_rows"].shape[0]
        logits = arrays.get("ort_logits", (B, N, self.model.cfg.vocab), np.float32)
        present = arrays.get("ort_present", (2, kv.L, B, kv.K, S, kv.D), self.np_kv)
        outputs = [("logits", logits), ("present_k", present[0]), ("present_v", present[1])]
        attention = arrays.get("ort_attention", (B, S), np.float32) if observe else None
        if attention is not None:
            outputs.append(("attention", attention))
        for name, arr in outputs:
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
        session.run_with_iobinding(io)
        return logits, present[0], present[1], attention


# -- building one from a scenario ------------------------------------------------------------------
def _refuse_unsupported(scn: Scenario, backend: str) -> None:
    be = scn.backend
    if backend == "ort" and be.device == "cuda":
        raise UserError("backend 'ort' runs on the CPU; for a GPU use --backend ort-migraphx "
                        "(AMD) or --backend torch", field="backend.device")
    if be.dtype != "float32":
        raise UserError("the ONNX Runtime backends run float32 weights only", field="backend.dtype")
    if be.kv_dtype not in KV_DTYPES:
        raise UserError(f"KV dtype {be.kv_dtype!r} is not supported here (choose from "
                        f"{', '.join(KV_DTYPES)})", field="backend.kv_dtype")


def _calibration_feeds(prompts: list[list[int]], model, kv_dtype: torch.dtype,
                       n: int = 4) -> list[dict[str, np.ndarray]]:
    """Prefill feeds of the first ``n`` prompts (seeded, so a prepared model's cache key is
    stable): what INT8 preparation calibrates its activation ranges on."""
    c = model.cfg
    empty = np.zeros((c.num_layers, 1, c.num_kv_heads, 0, c.head_dim),
                     str(kv_dtype).removeprefix("torch."))
    return [{"input_ids": np.array([p], np.int64), "positions": np.arange(len(p))[None],
             "attention_mask": np.ones((1, len(p)), np.int64), "past_k": empty,
             "past_v": empty, "logit_rows": np.array([len(p) - 1], np.int64)}
            for p in prompts[:n]]


def create(scn: Scenario, hw: HardwareProfile, requests: Requests, store: PagedKVStore,
           base_dir: Path, buffers: BufferPool, *, backend: str = "ort") -> OrtExecutor:
    """The executor for one run of ``scn``: exported model (cached), prepared for the provider
    (cached), a session per device, prompts, draft source."""
    from adapters.model.loading import load_shared, resolve_spec
    from adapters.ort_backend import providers as op
    from adapters.ort_backend.export import export_onnx
    from adapters.ort_backend.prepare import prepare_model
    from adapters.torch_backend.inputs import make_drafter, make_prompts

    provider = op.BACKEND_PROVIDERS[backend]
    op.check_provider(provider, backend)
    _refuse_unsupported(scn, backend)
    be = scn.backend
    if be.threads:
        torch.set_num_threads(be.threads)  # staging, dequantization and drafts run in torch
    spec = resolve_spec(scn.model.spec, base_dir)
    model, tokenizer = load_shared(spec, scn.workload.prompt_text, "float32", "cpu")
    prompts = make_prompts(scn, requests, tokenizer, model.cfg.vocab)
    kv_dtype = KV_DTYPES[be.kv_dtype]
    observe = observes_blocks(scn.policies.tiering)
    export = export_onnx(model, kv_dtype, observe=observe)
    mode = op.quantize_mode(provider, scn)
    path = prepare_model(export.path, mode, calibration=_calibration_feeds(
        prompts, model, kv_dtype) if mode == "int8" else None,
        reduce_range=None if provider == op.CPU_EP else False)  # 7-bit weights: CPU only
    # the accelerator's session, and the CPU's beside it for phases placed there
    targets = {op.BACKEND_DEVICE_KIND[backend]: provider}
    targets.setdefault("cpu", op.CPU_EP)
    sessions, infos, shapes = {}, {}, {}
    for kind, prov in targets.items():
        info = profile_device(hw, kind)
        infos[info.name] = info
        sessions[info.name] = op.make_session(path, prov, scn, cache_key=f"{export.key}-{mode}",
                                              base_dir=base_dir)
        shapes[info.name] = Shapes(op.is_static_shaped(prov, scn), functools.partial(
            op.static_tokens, scn=scn, provider=prov))
    drafter = make_drafter(scn, model, base_dir, "float32", "cpu")
    label = f"onnxruntime {ort.__version__} {provider}" + (f" ({mode})" if mode != "none" else "")
    ex = OrtExecutor(model, sessions, infos, prompts, store, kv_dtype=kv_dtype,
                     group=scn.engine.kv_quant_group, buffers=buffers, drafter=drafter,
                     use_binding=be.ort_binding, name=backend, measure_attention=observe,
                     device_label=label, shapes=shapes, faults=FaultSchedule(scn.faults))
    ex.tokenizer = tokenizer  # (None without one) for a server's text in and out
    speculating = scn.policies.speculation.kind != "off"
    longest = int((requests.prompt_tokens + requests.output_tokens).max())
    ex.warm_up(batch=scn.engine.max_batch, past_tokens=longest,
               new_tokens=scn.engine.max_draft_len + 1 if speculating else 1,
               prompt_tokens=int(requests.prompt_tokens.max()))
    return ex


def create_migraphx(scn, hw, requests, store, base_dir, buffers) -> OrtExecutor:
    """``ort-migraphx``: AMD GPUs through MIGraphX (needs an onnxruntime built with it)."""
    return create(scn, hw, requests, store, base_dir, buffers, backend="ort-migraphx")


def create_vitisai(scn, hw, requests, store, base_dir, buffers) -> OrtExecutor:
    """``ort-vitisai``: the Ryzen AI NPU through VitisAI (needs AMD's Ryzen AI onnxruntime)."""
    return create(scn, hw, requests, store, base_dir, buffers, backend="ort-vitisai")


def for_calibration(model, store, info: DeviceInfo, kv_dtype: torch.dtype, group: int,
                    buffers: BufferPool) -> tuple[OrtExecutor, dict[bool, ort.InferenceSession]]:
    """An ``ort`` executor for ``adapters.calibration.bench``, with its sessions over the graph
    without and with the attention output (keyed by ``observe``); threads as torch's."""
    from adapters.ort_backend.export import export_onnx
    from adapters.ort_backend.providers import base_options

    options = base_options(torch.get_num_threads())
    cpu = "CPUExecutionProvider"
    sessions = {observe: ort.InferenceSession(
        str(export_onnx(model, kv_dtype, observe=observe).path), options, providers=[cpu])
        for observe in (False, True)}
    ex = OrtExecutor(model, {info.name: sessions[False]}, {info.name: info}, [], store,
                     kv_dtype=kv_dtype, group=group, buffers=buffers,
                     device_label=f"onnxruntime {ort.__version__} {cpu}")
    return ex, sessions
