"""Microbenchmarks of a real executor on this machine (torch, or ONNX Runtime's CPU provider),
fitted into a calibration profile (``sim.costs.calibrated``).

Everything timed runs the executor's own code: prefill through ``prefill_request``, decode through
``decode_step``, verify passes of k + 1 tokens through ``forward`` (torch: the model over a
``PagedStep``; ort: the session over the staged past), layer-skip passes through the torch
forward (under ort the draft sources run in torch too), quantization and the tier checks through
whole steps of ``execute`` (``adapters.calibration.step_tail``).  Contexts are filled with random
K/V (attention cost does not depend on the values).  Each grid point is timed a few times and its
median kept; the features of each point come from the state it ran on.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from adapters.torch_backend.executor import TorchExecutor
from policies import Precision
from policies.buffer_sizing import AdaptiveBuffers
from sim.config.model_spec import ModelSpec
from sim.costs.features import FEATURES, attention_padded, forward_features, fused_attention
from sim.engine.buffer_pool import BufferPool
from sim.engine.executor import DeviceInfo
from sim.quality.attention import MeasuredAttention

BYTES = {torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0}
REPEATS = 5  # timed runs per grid point (the median kept)
VERSION = 27  # of the grid, timing method and features: a new one makes cached profiles stale


def kernel_active(device: torch.device) -> bool:
    """Whether the torch executor attends with the fused KV kernel on ``device``."""
    from adapters.kv import fused

    return device.type == "cpu" and fused.available()


def machine_fingerprint(device: torch.device, backend: str = "torch") -> str:
    """CPU or GPU model, core count, torch version (and onnxruntime's for the ort backends): a
    new machine means a new profile."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    text = f"{cpu}|{os.cpu_count()} cores|{gpu}|torch {torch.__version__}"
    if backend == "torch" and kernel_active(device):  # INFER_OS_KV_KERNEL=torch: another profile
        text += "|fused KV kernel"
    if backend.startswith("ort"):
        import onnxruntime

        text += f"|onnxruntime {onnxruntime.__version__}"
    return f"{text}|{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs (device synchronised around each):
    the typical time, as a measured run sees it (the fastest run is biased low against it)."""
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def primitives(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Raw throughputs (informative; the fit uses whole steps): a matrix-vector product over a
    64 MB matrix (memory bandwidth), a 512 x 1024 x 1024 matmul (FLOP/s), a tensor copy, the
    dispatch of a tiny op, and an allocation."""
    a = torch.randn(4096, 4096, dtype=dtype, device=device)
    x = torch.randn(4096, 1, dtype=dtype, device=device)
    gemv = timed(lambda: a @ x, device, 5)
    m = torch.randn(512, 1024, dtype=dtype, device=device)
    w = torch.randn(1024, 1024, dtype=dtype, device=device)
    gemm = timed(lambda: m @ w, device, 5)
    dst = torch.empty_like(a)
    copy = timed(lambda: dst.copy_(a), device, 5)
    tiny = torch.ones(8, device=device)
    dispatch = timed(lambda: [tiny.add(1) for _ in range(100)], device, 5) / 100
    alloc = timed(lambda: torch.empty(1 << 22, dtype=torch.uint8, device=device).fill_(0),
                  device, 5)
    nbytes = a.numel() * a.element_size()
    return {"gemv_bytes_per_s": nbytes / gemv, "gemm_flops_per_s": 2 * 512 * 1024 * 1024 / gemm,
            "copy_bytes_per_s": 2 * nbytes / copy, "dispatch_s": dispatch,
            "alloc_4mib_s": alloc}


@dataclass
class Measurements:
    features: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    copy_bytes_per_s: list[float] = field(default_factory=list)

    def add(self, kind: str, features: np.ndarray, seconds: float) -> None:
        self.kinds.append(kind)
        self.features.append(features)
        self.seconds.append(seconds)


class StepBench:
    """One executor (the real one) and helpers to put requests of a given context into it."""

    def __init__(self, model, spec: ModelSpec, kv_dtype: torch.dtype, block_tokens: int,
                 group: int, seed: int = 0, backend: str = "torch"):
        if block_tokens < 1 or group < 1:  # a block of 0 tokens never fills: a loop for ever
            raise ValueError(f"block_tokens ({block_tokens}) and group ({group}) must be >= 1")
        self.model, self.spec = model, spec
        w = model.tok_embeddings.weight
        self.device, self.dtype = w.device, w.dtype
        info = DeviceInfo("cpu" if self.device.type == "cpu" else "gpu", self.device.type, 0.0,
                          "memory")
        store = SimpleNamespace(block_tokens=block_tokens)  # tiers are set directly, not read
        buffers = BufferPool(AdaptiveBuffers())
        self.sessions = None  # ort: the graph without and with the attention output
        if backend == "torch":
            self.ex = TorchExecutor(model, [], store, info, kv_dtype=kv_dtype, group=group,
                                    buffers=buffers)
        else:
            from adapters.ort_backend.executor import for_calibration

            self.ex, self.sessions = for_calibration(model, store, info, kv_dtype, group,
                                                     buffers)
        self.kv = self.ex.kv
        # how the executor attends in decode/verify passes (sim.costs.calibrated.ExecutorLayout)
        self.batch_layout = "fused" if backend == "torch" and kernel_active(self.device) \
            else "padded"
        self.bt = block_tokens
        self.weight_b, self.kv_b = BYTES[self.dtype], BYTES[kv_dtype]
        self.gen = torch.Generator().manual_seed(seed)
        self.next_rid = 0
        self.m = Measurements()
        self._rows: dict[tuple, list[int]] = {}

    def _ids(self, n: int) -> list[int]:
        return torch.randint(self.model.cfg.vocab, (n,), generator=self.gen).tolist()

    def fill(self, tokens: int, precision: Precision) -> int:
        """A request holding ``tokens`` tokens of random K/V, its full blocks at ``precision``
        (quantized as the executor does, in one pass; ``step_tail.quantize_in_steps`` times
        quantizing as a step does it)."""
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        self.kv.add(rid, capacity_tokens=tokens + 64)
        self.kv.requests[rid].arena[:, :, :, :tokens].normal_(generator=self.gen)
        self.kv.append(rid, tokens)
        self.ex.tokens[rid] = self._ids(tokens)
        if precision != Precision.FP16:
            n = tokens // self.bt
            self.kv.set_precisions(rid, list(range(n)), [int(precision)] * n)
        return rid

    def release(self, rids: list[int]) -> None:
        for rid in rids:
            self.kv.free(rid)
            self.ex.tokens.pop(rid, None)

    def features(self, rids: list[int], new_tokens: int, layers: int,
                 observed: bool = False) -> np.ndarray:
        resident = np.array([self.kv.resident_tokens(r) for r in rids])
        quantized = np.zeros((len(rids), 3))
        for b, rid in enumerate(rids):
            for prec, seg in self.kv.requests[rid].segments.items():
                quantized[b, int(prec) - 1] += len(seg.blocks) * self.bt
        return forward_features(self.spec, layers, new_tokens, resident, quantized,
                                len(rids) * new_tokens, self.weight_b, self.kv_b,
                                padded=attention_padded(self.batch_layout, observed),
                                observed=observed, fused=fused_attention(
                                    self.batch_layout, observed, self.spec, new_tokens))

    def observing(self, on: bool) -> None:
        """Measure the attention each block draws in the following steps, as the executor does
        for tiering policies that observe blocks."""
        self.ex.attention = MeasuredAttention() if on else None
        if self.sessions is not None:  # ort: the graph with the attention output, also for
            self.ex.session = self.ex.sessions[self.ex.info.name] = self.sessions[on]  # execute

    def prefill(self, tokens: int, observe: bool = False) -> None:
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        feats = forward_features(self.spec, self.spec.num_layers, tokens, np.zeros(1),
                                 np.zeros((1, 3)), 1, self.weight_b, self.kv_b, padded=True,
                                 observed=observe, fused=fused_attention(
                                     self.batch_layout, observe, self.spec, tokens))
        self.ex.prompts = {rid: self._ids(tokens)}
        self.observing(observe)

        def run():
            self.ex.prefill_request(rid)
            self.kv.free(rid)

        # one untimed run first (ort: it grows ONNX Runtime's arena, which the ort executor does
        # before measuring, ``warm_up``; torch: first touch of the activations' memory), then the
        # median of five (of three above 512 tokens): a prompt's price rests on these few points
        run()
        self.m.add("prefill", feats, timed(run, self.device, REPEATS if tokens <= 512 else 3))
        self.observing(False)

    def rows(self, contexts: list[int], precision: Precision) -> list[int]:
        """Requests of these contexts at this precision, filled once and reused by the points
        that share them (each run adds a token or so to a row's context)."""
        key = (tuple(contexts), int(precision))
        if key not in self._rows:
            self.release([r for rids in self._rows.values() for r in rids])
            self._rows = {key: [self.fill(c, precision) for c in contexts]}
        return self._rows[key]

    def step(self, contexts: list[int], precision: Precision, batch: int, new_tokens: int = 1,
             layers: int | None = None, observe: bool = False) -> None:
        """Decode (one token per row, through ``decode_step``) or a pass of ``new_tokens`` over the
        first ``layers`` layers (verify, layer-skip) on the first ``batch`` rows of the given
        contexts."""
        rids = self.rows(contexts, precision)[:batch]
        L = layers or self.spec.num_layers
        if new_tokens == 1 and layers is None:
            def run():
                self.ex.decode_step(rids, 0, [], time.perf_counter())
        else:
            # a layer-skip pass runs in torch under every backend (as the draft source does)
            forward = self.ex.forward if layers is None else \
                functools.partial(TorchExecutor.forward, self.ex)

            def run():
                logits, st = forward(rids, [self._ids(new_tokens) for _ in rids],
                                     num_layers=layers)
                logits.argmax(dim=-1).tolist()
                st.commit([1] * len(rids))
        self.observing(observe)
        with torch.inference_mode():
            run()  # warm-up (first touch of buffers)
            feats = self.features(rids, new_tokens, L, observe)
            seconds = timed(run, self.device)
        self.observing(False)
        kind = "decode" if new_tokens == 1 and layers is None else (
            "verify" if layers is None else "layer-skip")
        self.m.add(kind, feats, seconds)

    def offload_copy(self) -> None:
        """Bytes per second of moving an FP16 block to the host tier and back."""
        rid = self.fill(2 * self.bt, Precision.FP16)
        nbytes = self.spec.kv_values_per_token * self.bt * self.kv_b
        t = timed(lambda: (self.kv.set_precision(rid, 0, Precision.OFFLOADED),
                           self.kv.set_precision(rid, 0, Precision.FP16)), self.device, 3)
        self.m.copy_bytes_per_s.append(2 * nbytes / t)
        self.release([rid])


def grid(spec: ModelSpec) -> list[tuple]:
    """The points to time, broad coverage first (a time budget may cut the tail): ``("prefill",
    tokens)`` or ``("step", contexts, precision, batch, new_tokens, layers)``; consecutive
    points share their rows.  Contexts stay within the model's limit."""
    cap = spec.max_context_tokens - 64  # room for the tokens the timed runs add

    def fit(n: int) -> int:
        return max(min(n, cap), 8)

    skip = max(spec.num_layers // 4, 1)
    P = Precision
    points: list[tuple] = [("prefill", fit(n)) for n in (16, 96, 384)]
    for ctx in (32, 480, 160, 1200, 800):
        for prec in (P.FP16, P.INT4, P.INT8):
            rows = [fit(ctx + 7 * b) for b in range(4)]
            points += [("step", rows, prec, B, 1, None) for B in (1, 2, 4)]
            if (ctx in (160, 800) and prec != P.INT8) or (ctx == 480 and prec == P.FP16):
                # verify passes: a pass of 2-10 rows costs about the same at every size here,
                # far above a decode step's (measured: 58-80 ms at 2-8 rows, 42 ms at 1), so
                # FP16 times every draft length up to 4, at three contexts: each row count's
                # knot (``GEMM_ROW_KNOTS``) rests on a few points (with two contexts, one shape's
                # error moved from -14.8 to +6.9 % between two calibrations, 2026-12-05)
                points += [("step", rows, prec, B, T, None) for T in (
                    (2, 3, 4, 5) if prec == P.FP16 else (3, 5)) for B in (1, 2)]
            if ctx in (160, 800) and prec == P.FP16:
                points += [("step", rows, prec, B, 1, skip) for B in (1, 2)]
        if ctx == 160:
            # prompts as scenarios send them (32-320 tokens) timed densely: with three points in
            # that range one noisy point moved every prompt's price (2026-12-05: prefills of
            # 41-303 tokens predicted 5 % short at the median, decode steps 0.0 %)
            points += [("prefill", fit(n)) for n in (48, 768, 200, 32, 64, 128, 256, 320)]
            # the last two row knots of the matrix-matrix products (``GEMM_ROW_KNOTS``)
            points += [("step", [fit(ctx + 7 * b) for b in range(4)], P.FP16, B, T, None)
                       for B, T in ((4, 3), (2, 8))]
    # observed prompts: their scores grow with the square of the prompt, so the longest is
    # timed too (fitted up to 1,024 tokens, 2,048-token prompts were predicted 18-21 % long)
    points += [("prefill", fit(n), True) for n in (96, 512, 768, 1024, 2048)]
    points += [("step", [fit(c), fit(c + 9)], P.FP16, B, 1, None, True)
               for c in (300, 1000) for B in (1, 2)]
    # observed steps over quantized blocks: the torch path's dequantization (the fused kernel
    # does not measure attention), which only observing tiering policies pay
    points += [("step", [fit(c), fit(c + 9)], prec, B, 1, None, True)
               for prec in (P.INT8, P.INT4) for c in (300, 1000) for B in (1, 2)]
    points += [("step", [fit(480), fit(1200)], P.INT2, 2, 1, None, True)]
    points += [("step", [fit(64), fit(900)], P.FP16, 2, 1, None),
               ("step", [fit(900), fit(64), fit(300)], P.INT4, 3, 1, None),
               ("step", [fit(480), fit(1200)], P.INT2, 1, 1, None),
               ("step", [fit(480), fit(1200)], P.INT2, 2, 1, None), ("prefill", fit(1536))]
    unique = list({repr(p): p for p in points}.values())  # clipped contexts may repeat points
    # the verify passes timed again, last: a pass's time drifts with the machine over seconds
    # to minutes, which five back-to-back runs do not average, and each row count's knot rests
    # on a few points (2026-12-05: the runs' passes of 4-10 rows read 70-101 ms, while one
    # shape's predicted price moved by 15-19 % from one calibration to the next)
    return unique + [p for p in unique if p[0] == "step" and p[4] > 1 and p[5] is None]


# re-timed by ``speed_check``: steps every calibration has, cheap to run
REFERENCE_POINTS = (("step", [160, 167], Precision.FP16, 1, 1, None),
                    ("step", [160, 167], Precision.FP16, 2, 1, None), ("prefill", 96))


def reference_seconds(sb: StepBench) -> tuple[list[np.ndarray], list[float]]:
    """The reference steps, each timed twice (the speed check's measurement, and the one the
    calibration stores to compare it with) -> (features, seconds) in a fixed order."""
    # fresh rows: each timed run adds a token to a row, and a bench kept warm across many checks
    # would otherwise time ever longer contexts (which read as the machine slowing down)
    sb.release([r for rids in sb._rows.values() for r in rids])
    sb._rows = {}
    saved, sb.m = sb.m, Measurements()
    try:
        for _ in range(2):
            for point in REFERENCE_POINTS:
                run_point(sb, point)
        return sb.m.features, sb.m.seconds
    finally:
        sb.m = saved


def run_point(sb: StepBench, point: tuple) -> None:
    if point[0] == "prefill":
        sb.prefill(*point[1:])
    else:
        _, contexts, prec, *rest = point
        sb.step(contexts, Precision(prec), *rest)


def coefficient_names() -> tuple[str, ...]:
    return FEATURES
