"""Fused dequantizing attention over a ``PagedKV`` for decode and verify steps (CPU).

``attend(kv, rid, layer, q, new_tokens)`` computes one layer's attention output for one request
straight from its stored blocks: the packed INT8 / INT4 / INT2 codes with their FP16 scales and
zero points, and the FP arena, each read once, tile by tile, into an L1-sized buffer
(``kernels/attend.c``: a running softmax over key tiles, split over key chunks across OpenMP
threads).  The torch path it replaces (``PagedStep.read`` + SDPA) dequantizes every quantized
block of the layer into a full copy, concatenates it with the arena and widens it to the compute
dtype before attending; at long contexts that costs more than the bytes the quantization saved.

The dequantized values are bit-identical to ``PagedKV.dequant``'s (code * scale + zero in float32,
rounded to the KV dtype); only the summation order differs from SDPA's, so outputs agree to float32
rounding (tests/adapters/kv/test_fused.py) and greedy tokens are the same.

The kernel is C with OpenMP, compiled on first use with the system's C compiler (``$CC``, default
``cc``) for this CPU (``-O3 -march=native``), cached under ``$INFER_OS_CACHE/kernels`` by a hash of
its source, flags and CPU, and loaded with ctypes: it shares torch's OpenMP runtime and thread
count.  No compiler, a failed build, a GPU tensor or ``INFER_OS_KV_KERNEL=torch``: ``available()``
is False and callers keep the torch path (the pure-torch fallback), which gives the same tokens.
``INFER_OS_KV_KERNEL=fused`` makes a failed build an error instead.  (Built at first use rather
than at ``pip install`` time so that installing never needs a compiler, nor torch at build time.)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from sim.config.paths import cache_folder
from sim.costs.features import FUSED_MAX_ROWS
from sim.errors import UserError

SOURCE = Path(__file__).with_name("kernels") / "attend.c"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]  # compiling
# linking: without -ffast-math, which would link crtfastmath.o, whose constructor turns on
# flush-to-zero for the whole process (numpy, torch, hypothesis's subnormal floats) when loaded
LINK = ["-shared", "-fopenmp"]
KV_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# query rows per KV head (G * T) the fused path takes; more is a prefill: SDPA (the calibrated
# cost model's features follow the same limit)
MAX_ROWS = FUSED_MAX_ROWS

_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the kernel is unavailable, once known


def mode() -> str:
    """``auto`` (default: fused when it builds), ``fused`` (required) or ``torch`` (never)."""
    value = os.environ.get("INFER_OS_KV_KERNEL", "auto").strip().lower() or "auto"
    if value not in ("auto", "fused", "torch"):
        raise UserError(f"INFER_OS_KV_KERNEL must be auto, fused or torch, not {value!r}")
    return value


def _cpu_key() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [x for x in info.splitlines() if x.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return "\n".join(lines)


def _build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (once per source, flags and CPU) and load the kernel.  ``extra_flags``: appended
    to ``FLAGS`` (the tests build ``-mno-avx512f`` too, to run the generic paths)."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler ({cc!r} not found on PATH)")
    flags = [*FLAGS, *extra_flags]
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *flags, *LINK]).encode() + _cpu_key().encode())
    out = cache_folder("kernels") / f"attend-{key.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / out.name
            obj = part.with_suffix(".o")
            done = subprocess.run([cc, *flags, "-c", "-o", str(obj), str(SOURCE)],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                done = subprocess.run([cc, *LINK, "-o", str(part), str(obj), "-lm"],
                                      capture_output=True, text=True)
            if done.returncode != 0:
                raise OSError(f"{cc} failed to build {SOURCE.name}: {done.stderr.strip()[-600:]}")
            os.replace(part, out)  # atomic: parallel processes never load a partial file
    lib = ctypes.CDLL(str(out))
    i, i64, f, p = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.attend_init.argtypes = [i, i, i, p, p, p]
    lib.attend_finish.argtypes = [i, i, i, p, p, p]
    lib.attend_dense.argtypes = [i, i, i, i, p, i64, p, p, i64, i, i64, f, p, p, p]
    lib.attend_dense_once.argtypes = [i, i, i, i, p, i64, p, p, i64, i, i64, f, p]
    lib.attend_quant.argtypes = [i, i, i, i, p, i64, i, i, i, p, i64, p, p, i64, p, i64, p, p,
                                 i64, i, f, p, p, p]
    return lib


def available() -> bool:
    """Whether the fused kernel can run here (built and loaded now if it was not yet)."""
    global _lib, _error
    if mode() == "torch":
        return False
    if _lib is None and _error is None:
        try:
            _lib = _build()
        except OSError as err:
            _error = str(err)
            if mode() == "fused":
                raise UserError(f"the fused KV attention kernel is unavailable: {err}") from None
    return _lib is not None


def unavailable_reason() -> str | None:
    return _error


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _state(K: int, R: int, D: int) -> tuple[torch.Tensor, ...]:
    """The running softmax of one call sequence (m, l, acc) and the output, initialized."""
    assert _lib is not None
    f32 = torch.float32
    m, lsum = torch.empty((K, R), dtype=f32), torch.empty((K, R), dtype=f32)
    acc, out = torch.empty((K, R, D), dtype=f32), torch.empty((K, R, D), dtype=f32)
    _lib.attend_init(K, R, D, _ptr(m), _ptr(lsum), _ptr(acc))
    return m, lsum, acc, out


def attend_dense(k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, num_tokens: int,
                 new_tokens: int) -> torch.Tensor:
    """Attention of q [K, R, D] over keys/values k, v [K, S_max, D] (each head contiguous, any
    KV dtype) at positions 0..num_tokens-1, the last ``new_tokens`` of them causal -> [K, R, D]
    float32 (``ContiguousKVCache``'s decode and verify steps)."""
    lib = _lib
    assert lib is not None and k.stride() == v.stride() and k[0].is_contiguous()
    K, R, D = q.shape
    q = q.float().contiguous()
    out = torch.empty((K, R, D), dtype=torch.float32)
    lib.attend_dense_once(K, R, D, new_tokens, _ptr(q), num_tokens, _ptr(k), _ptr(v),
                          k.stride(0), KV_CODES[k.dtype], num_tokens - new_tokens, D ** -0.5,
                          _ptr(out))
    return out


def attend(kv, rid: int, layer: int, q: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """One layer's attention for request ``rid``: q [K, R, D] (rows g * T + t, as
    ``Attention.forward`` groups them; T = ``new_tokens``, written to the arena this step but not
    yet appended) -> [K, R, D] float32, over every resident token and the new ones (causal among
    the new ones), scaled by 1/sqrt(D).  Call only when ``available()``; CPU tensors only."""
    from adapters.kv.paged import BITS
    lib = _lib
    assert lib is not None
    K, R, D = q.shape
    T = new_tokens
    q = q.float().contiguous()
    m, lsum, acc, out = _state(K, R, D)
    scale, code = D ** -0.5, KV_CODES[kv.dtype]
    r = kv.requests[rid]
    for prec, seg in r.segments.items():
        kd, vd = seg.k_data[:, layer], seg.v_data[:, layer]  # [n, bytes], strided by L * bytes
        ks, kz = seg.k_scales[:, layer], seg.k_zeros[:, layer]  # [n, K, D, gk]
        vs, vz = seg.v_scales[:, layer], seg.v_zeros[:, layer]  # [n, K, bt, gv]
        assert kz.stride(0) == ks.stride(0) and vz.stride(0) == vs.stride(0)
        assert all(t[0].is_contiguous() for t in (kd, vd, ks, kz, vs, vz))
        lib.attend_quant(K, R, D, T, _ptr(q), kd.shape[0], kv.bt, BITS[prec], kv.group,
                         _ptr(kd), kd.stride(0), _ptr(ks), _ptr(kz), ks.stride(0), _ptr(vd),
                         vd.stride(0), _ptr(vs), _ptr(vz), vs.stride(0), code, scale,
                         _ptr(m), _ptr(lsum), _ptr(acc))
    used = kv.arena_tokens(rid) + T
    k = r.arena[layer, 0]  # [K, capacity, D]
    lib.attend_dense(K, R, D, T, _ptr(q), used, _ptr(k), _ptr(r.arena[layer, 1]), k.stride(0),
                     code, used - T, scale, _ptr(m), _ptr(lsum), _ptr(acc))
    lib.attend_finish(K, R, D, _ptr(lsum), _ptr(acc), _ptr(out))
    return out
