"""Our transformer exported to ONNX with explicit past/present K/V, cached on disk.

The graph (one for prefill and decode; every axis below but L, K, D and V is dynamic):

    inputs   input_ids       [B, T]           int64
             positions       [B, T]           int64, absolute token positions (RoPE)
             attention_mask  [B, P + T]       int64, 1 where a key slot holds a real token
             past_k, past_v  [L, B, K, P, D]  the KV dtype (float16 or float32)
             logit_rows      [N]              int64, which of the T new positions get logits
                                              (the last for prefill and decode, all T to verify
                                              drafts): the head runs on N rows, not T
    outputs  logits          [B, N, V]        the model dtype
             present_k/_v    [L, B, K, P + T, D]  past followed by the new tokens' K/V
             attention       [B, P + T]       float32, exported with ``observe=True`` only: the
                                              attention probabilities of the step's queries,
                                              averaged over heads and queries, summed over
                                              layers (what a tiering policy that observes
                                              blocks reads; ``adapters.kv.paged_step``'s measure)

Key slot s is visible to query t when ``attention_mask[b, s] == 1`` and ``s <= P + t`` (causal in
slot order: the past slots, then the new tokens in order).  So a batch of sequences with different
past lengths runs padded to the longest, its padding masked, and positions stay per sequence.
K/V are stacked over layers (one tensor each), so a caller binds two KV buffers, not 2L.  New K/V
are rounded to the KV dtype before attention, as the torch adapter's KV store does.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) with
``dynamic_shapes``, which works here for the Llama family and GPT-2 and is the exporter torch
maintains.  The model runs through a wrapper that calls our own blocks with a ``StepContext`` it
builds from graph inputs, so nothing data-dependent (``int(positions.max())``, the grown RoPE
table) is traced; RoPE comes from a fixed table of ``max_positions`` rows.

Weights go to an external ``model.onnx.data`` file beside ``model.onnx``.  Exports are cached under
``$INFER_OS_CACHE/onnx`` (default ``~/.cache/infer-os/onnx``), one folder per SHA-256 of the
weights, the config, the options and the exporter versions; a folder is written under a temporary
name and renamed when complete, so a crash never leaves a half-written cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapters.kv.cache import KVCache
from adapters.kv.paged_step import attention_probs
from adapters.model.transformer import StepContext, Transformer, rope_cos_sin
from sim.config.paths import cache_folder

FORMAT_VERSION = 2  # bump when the graph's inputs or outputs change
INPUTS = ("input_ids", "positions", "attention_mask", "past_k", "past_v", "logit_rows")
OUTPUTS = ("logits", "present_k", "present_v")
OPSET = 18


@dataclass(frozen=True, slots=True)
class OnnxExport:
    """An exported model on disk: ``path`` (``model.onnx``, weights in ``model.onnx.data`` beside
    it), the cache ``key``, and whether this call found it already exported (``is_reused``)."""

    path: Path
    key: str
    is_reused: bool
    kv_dtype: torch.dtype
    observe: bool


class _StackedCache(KVCache):
    """The KVCache protocol over graph tensors: ``write`` appends the new K/V (rounded to the KV
    dtype) to the layer's past, ``read`` returns past + new; ``present`` stacks what was written."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, dtype: torch.dtype):
        self.past_k, self.past_v, self.dtype = past_k, past_v, past_k.dtype
        self.compute_dtype = dtype
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.attention: torch.Tensor | None = None  # [B, S], when observed

    def observe(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                mask: torch.Tensor | None) -> None:
        probs = attention_probs(q, k, mask)
        self.attention = probs if self.attention is None else self.attention + probs

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        self.k.append(torch.cat([self.past_k[layer], k.to(self.dtype)], dim=2))  # [B, K, S, D]
        self.v.append(torch.cat([self.past_v[layer], v.to(self.dtype)], dim=2))

    def read(self, layer: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer].to(self.compute_dtype), self.v[layer].to(self.compute_dtype)


class KVGraph(nn.Module):
    """The exported function: (input_ids, positions, attention_mask, past_k, past_v,
    logit_rows) -> (logits, present_k, present_v[, attention]), through the blocks of
    ``model``."""

    def __init__(self, model: Transformer, observe: bool = False):
        super().__init__()
        self.model, self.observe = model, observe
        cfg = model.cfg
        dtype = model.tok_embeddings.weight.dtype
        if model.rope is not None:
            cos, sin = rope_cos_sin(torch.arange(cfg.max_positions), cfg.head_dim,
                                    cfg.rope_theta, dtype)
            half = cfg.head_dim // 2
            self.register_buffer("cos", cos, persistent=False)  # [N, D]
            self.register_buffer("sin", torch.cat((-sin[:, :half], sin[:, half:]), -1),
                                 persistent=False)  # signed, as RopeTable

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor, logit_rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, cfg = self.model, self.model.cfg
        dtype = m.tok_embeddings.weight.dtype
        T, S = input_ids.shape[1], attention_mask.shape[1]
        P = S - T
        slots = torch.arange(S, device=input_ids.device)  # [S]
        queries = torch.arange(T, device=input_ids.device) + P  # [T], slot of each new token
        mask = (slots[None, :] <= queries[:, None])[None] & (attention_mask[:, None, :] != 0)
        group = cfg.num_heads // cfg.num_kv_heads
        mask = mask[:, None].repeat(1, 1, group, 1)  # [B, 1, G * T, S], rows g * T + t
        cos = sin = None
        if m.rope is not None:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # [B,1,T,D]
        cache = _StackedCache(past_k, past_v, dtype)
        if self.observe:
            cache.observe_attention = cache.observe
        ctx = StepContext(positions, S, mask, cos, sin, cache)
        x = m.tok_embeddings(input_ids)  # [B, T, E]
        if m.pos_embeddings is not None:
            x = x + m.pos_embeddings(positions)
        for block in m.layers:
            x = block(x, ctx)
        logits = m.output(m.norm(x[:, logit_rows]))  # [B, N, V]
        out = (logits, torch.stack(cache.k), torch.stack(cache.v))
        if self.observe:
            assert cache.attention is not None
            return (*out, cache.attention.float())
        return out


def cache_root() -> Path:
    return cache_folder("onnx")


def export_key(model: Transformer, kv_dtype: torch.dtype, observe: bool = False) -> str:
    """SHA-256 over the weights (names, shapes, dtypes, bytes), the config, the options and the
    versions of the format, torch and onnxscript."""
    import onnxscript

    h = hashlib.sha256()
    meta = {"format": FORMAT_VERSION, "opset": OPSET, "torch": torch.__version__,
            "onnxscript": onnxscript.__version__, "kv_dtype": str(kv_dtype),
            "observe": observe,
            "config": dataclasses.asdict(model.cfg)}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _example(model: Transformer, kv_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    B, T, P = 2, 3, 4
    past = torch.zeros(cfg.num_layers, B, cfg.num_kv_heads, P, cfg.head_dim, dtype=kv_dtype)
    return (torch.zeros(B, T, dtype=torch.int64), torch.arange(P, P + T).repeat(B, 1),
            torch.ones(B, P + T, dtype=torch.int64), past, past.clone(),
            torch.arange(T - 1, dtype=torch.int64))


def _dynamic_shapes() -> dict[str, dict[int, object]]:
    batch, new = torch.export.Dim("batch"), torch.export.Dim("new_tokens")
    total = torch.export.Dim("total_tokens")
    past = torch.export.Dim("past_tokens")
    return {"input_ids": {0: batch, 1: new}, "positions": {0: batch, 1: new},
            "attention_mask": {0: batch, 1: total},
            "past_k": {1: batch, 3: past}, "past_v": {1: batch, 3: past},
            "logit_rows": {0: torch.export.Dim("logit_rows")}}


def _export_to(model: Transformer, kv_dtype: torch.dtype, observe: bool,
               folder: Path) -> None:
    graph = KVGraph(model, observe).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names, not ours to act on
        program = torch.onnx.export(
            graph, _example(model, kv_dtype), input_names=list(INPUTS),
            output_names=[*OUTPUTS, "attention"] if observe else list(OUTPUTS),
            dynamic_shapes=_dynamic_shapes(), opset_version=OPSET,
            dynamo=True, external_data=True, verbose=False)
    program.save(str(folder / "model.onnx"), external_data=True)


def export_onnx(model: Transformer, kv_dtype: torch.dtype | None = None,
                root: Path | None = None, observe: bool = False) -> OnnxExport:
    """``model`` exported (or found in the cache) -> where ``model.onnx`` is.  ``kv_dtype``: the
    dtype of past/present K/V (default: the model's); ``observe``: add the ``attention``
    output (costs one more q.K product per layer)."""
    kv_dtype = kv_dtype or model.tok_embeddings.weight.dtype
    key = export_key(model, kv_dtype, observe)
    path, reused = cached_folder(root or cache_root(), key,
                                 lambda tmp: _export_to(model, kv_dtype, observe, tmp))
    return OnnxExport(path, key, reused, kv_dtype, observe)


def cached_folder(root: Path, key: str, build) -> tuple[Path, bool]:
    """``root/key/model.onnx``, built by ``build(folder)`` unless it exists -> (its path, whether
    it existed).  Built in a temporary folder renamed when complete, so a crash never leaves a
    half-written entry and two processes building the same key do not collide."""
    final = root / key
    if (final / "model.onnx").exists():
        return final / "model.onnx", True
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same build first
            if not (final / "model.onnx").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.onnx", False
