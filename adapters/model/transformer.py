"""Our own decoder-only transformers in torch (Llama/Mistral family and GPT-2), so that the K/V
layout is ours, plus the prefill -> decode_one_token -> generate_greedy ladder.

Shapes: B batch, T new tokens, S cached + new tokens, E hidden, H query heads, K KV heads,
D head dim, F FFN hidden, V vocabulary.  Linear weights are [out, in] (HF's GPT-2 Conv1D weights
are [in, out] and are transposed when loaded, see ``adapters.model.hf_loader``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from adapters.kv.cache import ContiguousKVCache, KVCache
from adapters.model.config_check import check_hf_config
from sim.config.model_spec import spec_from_hf_dict
from sim.errors import UserError

Arch = Literal["llama", "gpt2"]
_LLAMA_TYPES = ("llama", "mistral")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What our implementation needs from a Hugging Face ``config.json``."""

    arch: Arch
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab: int
    tied_embeddings: bool
    norm_eps: float
    max_positions: int
    rope_theta: float = 10000.0  # llama only
    attention_bias: bool = False  # llama: bias on q/k/v/o; GPT-2 always has biases
    mlp_bias: bool = False
    gelu_approximate: Literal["tanh", "none"] = "tanh"  # GPT-2 only
    sliding_window: int | None = None  # mistral; we refuse contexts longer than it

    @property
    def qkv_out(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim


def config_from_hf(cfg: dict[str, Any], file: str | None = None) -> ModelConfig:
    """Parse a ``config.json`` dict; unsupported options and values of the wrong type or out of
    range are a ``UserError`` naming the field."""
    if not isinstance(cfg, dict):
        raise UserError(f"expected a JSON object, got {type(cfg).__name__}", file=file)
    kind = cfg.get("model_type")
    if kind in ("gpt2", *_LLAMA_TYPES):
        check_hf_config(cfg, "gpt2" if kind == "gpt2" else "llama", file)
    try:
        if kind == "gpt2":
            return _gpt2_config(cfg, file)
        if kind in _LLAMA_TYPES:
            return _llama_config(cfg, file)
    except KeyError as err:
        raise UserError(f"missing key {err.args[0]!r}", file=file) from None
    raise UserError(f"unsupported model_type {kind!r} (supported: gpt2, "
                    f"{', '.join(_LLAMA_TYPES)})", file=file, field="model_type")


def _gpt2_config(cfg: dict[str, Any], file: str | None) -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in (*_GELU_TANH, "gelu"):
        raise UserError(f"unsupported activation {act!r}", file=file, field="activation_function")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            raise UserError("not supported", file=file, field=flag)
    s = spec_from_hf_dict(cfg, "gpt2", file=file)
    return ModelConfig(
        "gpt2", s.num_layers, s.hidden, s.num_heads, s.num_kv_heads, s.head_dim, s.ffn_hidden,
        s.vocab, s.tied_embeddings, cfg.get("layer_norm_epsilon", 1e-5), s.max_context_tokens,
        mlp_bias=True, gelu_approximate="none" if act == "gelu" else "tanh")


def _llama_config(cfg: dict[str, Any], file: str | None) -> ModelConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise UserError(f"unsupported activation {cfg['hidden_act']!r}", file=file,
                        field="hidden_act")
    # transformers >= 5 nests RoPE options in rope_parameters; older files use rope_theta and
    # rope_scaling at the top level.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        field = "rope_parameters" if "rope_parameters" in cfg else "rope_scaling"
        raise UserError(f"RoPE type {rope_type!r} is not supported yet", file=file, field=field)
    s = spec_from_hf_dict(cfg, "llama", file=file)
    return ModelConfig(
        "llama", s.num_layers, s.hidden, s.num_heads, s.num_kv_heads, s.head_dim, s.ffn_hidden,
        s.vocab, s.tied_embeddings, cfg.get("rms_norm_eps", 1e-6), s.max_context_tokens,
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)), sliding_window=cfg.get("sliding_window"))


# -- building blocks ------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [(B,) T, D] for rotary embeddings (Su et al. 2021), half-split layout as in HF
    Llama: angle(p, i) = p * theta^(-2i/D) for i < D/2, repeated for the second half."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float()
                               / head_dim)  # [D/2]
    angles = positions.float()[..., None] * inv_freq  # [(B,) T, D/2], radians
    emb = torch.cat((angles, angles), dim=-1)  # [T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class RopeTable:
    """cos and signed sin [N, D] for positions 0..N-1, grown on demand (to a power of two) and
    rebuilt if the device or dtype changes; ``sin`` is ``[-sin | sin]`` over the two halves so
    that ``apply_rope`` needs one ``roll`` instead of a slice, a negation and a cat."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self.cos = self.sin = torch.empty(0)

    def lookup(self, positions: torch.Tensor, last: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [(B,) T, D] at ``positions`` (whose largest value is ``last``)."""
        if (last >= self.cos.shape[0] or self.cos.device != positions.device
                or self.cos.dtype != dtype):
            size = 1 << max(last, 255).bit_length()  # >= last + 1, at least 256
            cos, sin = rope_cos_sin(torch.arange(size, device=positions.device), self.head_dim,
                                    self.theta, dtype)
            half = self.head_dim // 2
            self.cos, self.sin = cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return self.cos[positions], self.sin[positions]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated pairwise (i, i + D/2) by the angles in cos and the *signed* sin
    ``[-sin | sin]`` (``RopeTable``), each [T, D] or [B, 1, T, D]:
    x * cos + [x2 | x1] * [-sin | sin], i.e. HF's x * cos + rotate_half(x) * sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        bias = cfg.arch == "gpt2" or cfg.attention_bias
        self.wqkv = nn.Linear(cfg.hidden, cfg.qkv_out, bias=bias)  # [q | k | v] rows
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden, bias=bias)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = self.wqkv(x).view(B, T, H + 2 * K, D).transpose(1, 2)  # [B, H + 2K, T, D]
        qk, v = qkv[:, :H + K], qkv[:, H + K:]  # v: [B, K, T, D]
        if ctx.cos is not None:  # q and k rotated together: [B, H + K, T, D]
            qk = apply_rope(qk, ctx.cos, ctx.sin)
        q, k = qk[:, :H], qk[:, H:]
        # GQA without copying K/V: query head h = j * G + g uses KV head j, so the G query heads
        # of KV head j become G * T query rows ([B, K, G * T, D]); ctx.mask is repeated to match.
        q = q.reshape(B, K, H // K * T, D)
        y = None
        if ctx.cache is not None:
            ctx.cache.write(self.layer, ctx.positions, k, v)
            if ctx.cache.attend is not None:  # a cache that attends itself (fused kernel)
                y = ctx.cache.attend(self.layer, q)
            if y is None:
                k, v = ctx.cache.read(self.layer, ctx.num_kv_tokens)  # [B, K, S, D]
        if y is None:
            if ctx.cache is not None and ctx.cache.observe_attention is not None:
                # a cache that measures attention (the paged cache) sees q, k
                ctx.cache.observe_attention(self.layer, q, k, ctx.mask)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask)  # scale 1/sqrt(D)
        return self.wo(y.view(B, H, T, D).transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    """Llama: w2(silu(w1 x) * w3 x) (SwiGLU, Shazeer 2020).  GPT-2: w2(gelu(w1 x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.w1 = nn.Linear(cfg.hidden, cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.hidden, bias=cfg.mlp_bias)
        self.w3 = nn.Linear(cfg.hidden, cfg.ffn_hidden, bias=cfg.mlp_bias) \
            if cfg.arch == "llama" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x), approximate=self.cfg.gelu_approximate))


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "gpt2":
        return nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
    return RMSNorm(cfg.hidden, cfg.norm_eps)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then h + ffn(norm(h))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm, self.attn = _norm(cfg), Attention(cfg, layer)
        self.ffn_norm, self.ffn = _norm(cfg), FeedForward(cfg)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), ctx)
        return h + self.ffn(self.ffn_norm(h))


@dataclass(frozen=True, slots=True)
class StepContext:
    """What every layer of one forward shares: positions, RoPE angles, mask, cache.  Built by
    ``Transformer`` from the positions and the cache, or by a caller that runs the blocks itself
    (the ONNX export's graph, ``adapters.ort_backend.export.KVGraph``)."""

    positions: torch.Tensor  # [T] or [B, T] int64, absolute token positions of the new tokens
    num_kv_tokens: int  # S: tokens attended over (cached + new)
    # [G * T, S] or [B, 1, G * T, S] bool, True where a query may attend to a key, repeated for
    # the G query heads per KV head (see Attention.forward); None when every key is visible
    mask: torch.Tensor | None
    cos: torch.Tensor | None  # [T, D] or [B, 1, T, D], llama only
    sin: torch.Tensor | None  # signed: [-sin | sin] (RopeTable)
    cache: KVCache | None


class Transformer(nn.Module):
    """Token embedding (+ learned positions for GPT-2), L blocks, final norm, LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
        self.pos_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden) \
            if cfg.arch == "gpt2" else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = _norm(cfg)
        self.output = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        if cfg.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RopeTable(cfg.head_dim, cfg.rope_theta) if cfg.arch == "llama" else None
        self.register_load_state_dict_post_hook(_column_major_weights)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                positions: torch.Tensor | None = None,
                num_layers: int | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V] in the model's dtype.  ``positions`` [T] (shared
        by the batch) or [B, T] (per sequence) default to 0..T-1.  With a cache, the new K/V are
        written at ``positions`` and attention runs over what the cache returns (for a plain
        cache: positions 0..max(positions)); without one, over the new tokens only.
        ``num_layers``: run only the first n blocks, then the final norm and head (layer-skip
        self-drafting)."""
        return self.output(self.norm(self.hidden_states(input_ids, cache, positions,
                                                        num_layers)))  # [B, T, V]

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                      positions: torch.Tensor | None = None,
                      num_layers: int | None = None) -> torch.Tensor:
        """``forward`` without the final norm and head: [B, T, E]."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        ctx = self._context(positions, cache)
        x = self.tok_embeddings(input_ids)  # [B, T, E]
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(positions)
        for block in self.layers if num_layers is None else self.layers[:num_layers]:
            x = block(x, ctx)
        return x

    def _context(self, positions: torch.Tensor, cache: KVCache | None) -> StepContext:
        """A cache whose ``attention_mask()`` is not None (the paged cache) supplies its own mask
        and key count; otherwise keys are positions 0..max(positions) with a causal mask."""
        cfg = self.cfg
        last = int(positions.max())  # one device sync per forward, not per layer
        limit = cfg.sliding_window if cfg.arch == "llama" else cfg.max_positions
        if limit is not None and last >= limit:
            raise ValueError(f"position {last} is beyond this model's limit of {limit}")
        own_mask = cache.attention_mask() if cache is not None else None
        T = positions.shape[-1]
        mask: torch.Tensor | None
        if own_mask is not None:
            mask, num_kv_tokens = own_mask  # [B, 1, T, S]
        elif T == 1 and positions.dim() == 1:  # one token, shared position: sees keys 0..last
            num_kv_tokens, mask = (last + 1 if cache is not None else 1), None
        else:
            num_kv_tokens = last + 1 if cache is not None else T
            key_positions = positions if cache is None else torch.arange(
                num_kv_tokens, device=positions.device)
            mask = key_positions[..., None, :] <= positions[..., :, None]  # [(B,) T, S]
            if mask.dim() == 3:
                mask = mask[:, None]  # [B, 1, T, S]
        group = cfg.num_heads // cfg.num_kv_heads
        if mask is not None and group > 1:  # rows g * T + t, as the queries in Attention
            mask = mask.repeat(group, 1) if mask.dim() == 2 else mask.repeat(1, 1, group, 1)
        cos = sin = None
        if self.rope is not None:
            cos, sin = self.rope.lookup(positions, last, self.tok_embeddings.weight.dtype)
            if cos.dim() == 3:  # per-sequence positions: [B, 1, T, D] broadcasts over heads
                cos, sin = cos[:, None], sin[:, None]
        return StepContext(positions, num_kv_tokens, mask, cos, sin, cache)

    def new_cache(self, batch: int, max_tokens: int) -> ContiguousKVCache:
        w = self.tok_embeddings.weight
        return ContiguousKVCache.empty(
            num_layers=self.cfg.num_layers, batch=batch, num_kv_heads=self.cfg.num_kv_heads,
            head_dim=self.cfg.head_dim, max_tokens=max_tokens, dtype=w.dtype, device=w.device)


def _column_major_weights(model: Transformer, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: store every linear weight [out, in] column-major (the memory of
    a contiguous [in, out]), so that ``F.linear``'s ``x @ w.T`` reads a contiguous matrix.  The
    values, shapes, names and tied-parameter identity are unchanged; batch-1 decode, a
    matrix-vector product per weight, runs ~20-30 % faster this way on x86 CPUs (MKL), and
    prefill equally fast (benchmarks/README.md).  The tied embedding goes along with the head."""
    params = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    if model.cfg.tied_embeddings:
        params.append(model.tok_embeddings.weight)
    for w in {id(w): w for w in params}.values():
        if w.is_contiguous() and w.dim() == 2:
            w.data = w.data.t().contiguous().t()


# -- the generation ladder (gpt-fast style) --------------------------------------------------------
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> token ids [B, 1] (argmax)."""
    return logits.argmax(dim=-1, keepdim=True)


@torch.inference_mode()
def prefill(model: Transformer, input_ids: torch.Tensor, cache: KVCache,
            start: int = 0) -> torch.Tensor:
    """Run the prompt [B, T] at positions start..start+T-1, filling the cache; -> last logits
    [B, V]."""
    T = input_ids.shape[1]
    positions = torch.arange(start, start + T, device=input_ids.device)
    x = model.hidden_states(input_ids, cache, positions)[:, -1]  # the head on the last token only
    return model.output(model.norm(x))


@torch.inference_mode()
def decode_one_token(model: Transformer, token: torch.Tensor, cache: KVCache,
                     position: int) -> torch.Tensor:
    """One token [B, 1] at ``position`` -> logits [B, V]."""
    positions = torch.tensor([position], device=token.device)
    return model(token, cache, positions)[:, -1]


@torch.inference_mode()
def generate_greedy(model: Transformer, prompt: torch.Tensor, num_new_tokens: int,
                    cache: KVCache | None = None) -> torch.Tensor:
    """prompt [B, T] -> [B, T + num_new_tokens], argmax decoding, no stop token."""
    T = prompt.shape[1]
    if cache is None:
        cache = model.new_cache(prompt.shape[0], T + num_new_tokens)
    tokens = [prompt]
    if num_new_tokens > 0:
        tokens.append(greedy(prefill(model, prompt, cache)))
    for i in range(1, num_new_tokens):
        tokens.append(greedy(decode_one_token(model, tokens[-1], cache, T + i - 1)))
    return torch.cat(tokens, dim=1)
