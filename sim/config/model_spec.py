"""Transformer model specs: built-in presets and import from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sim.errors import UserError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer.  ``gated_ffn`` is SwiGLU (3 FFN matrices, Llama
    family) versus a plain MLP (2 matrices, GPT-2).  ``weight_bits`` is the storage precision of
    the weights (16 = FP16/BF16, 4.5 = a q4_0-style 4-bit format with its scales)."""

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab: int
    tied_embeddings: bool
    gated_ffn: bool
    max_context_tokens: int
    weight_bits: float = 16.0

    @property
    def attention_params(self) -> int:
        """Per layer: Q, K, V and output projections."""
        q_out = self.num_heads * self.head_dim
        kv_out = 2 * self.num_kv_heads * self.head_dim
        return self.hidden * (q_out + kv_out) + q_out * self.hidden

    @property
    def ffn_params(self) -> int:
        return (3 if self.gated_ffn else 2) * self.hidden * self.ffn_hidden

    @property
    def head_params(self) -> int:
        """The LM head (shared with the embedding when tied)."""
        return self.hidden * self.vocab

    @property
    def num_params(self) -> int:
        embed = 0 if self.tied_embeddings else self.vocab * self.hidden
        per_layer = self.attention_params + self.ffn_params
        return self.num_layers * per_layer + self.head_params + embed

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.weight_bits / 8

    @property
    def kv_values_per_token(self) -> int:
        """K and V elements per token over all layers: 2 x layers x kv_heads x head_dim."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def with_weight_bits(self, bits: float | None) -> ModelSpec:
        return self if bits is None else replace(self, weight_bits=float(bits))


def _llama(name, layers, hidden, heads, kv_heads, ffn, vocab, tied, ctx, head_dim=None):
    return ModelSpec(name, layers, hidden, heads, kv_heads, head_dim or hidden // heads, ffn, vocab,
                     tied, True, ctx)


# Figures from each model's published config.json.
PRESETS: dict[str, ModelSpec] = {
    "gpt2": ModelSpec("gpt2", 12, 768, 12, 12, 64, 3072, 50257, True, False, 1024),
    "smollm2-135m": _llama("smollm2-135m", 30, 576, 9, 3, 1536, 49152, True, 8192),
    "tinyllama-1.1b": _llama("tinyllama-1.1b", 22, 2048, 32, 4, 5632, 32000, False, 2048),
    "llama-3.2-1b": _llama("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, True, 131072),
    "llama-2-7b": _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, False, 4096),
    "mistral-7b": _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, False, 32768),
    "llama-3.1-8b": _llama("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, False, 131072),
}


def from_hf_config(path: Path) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (Llama/Mistral/Qwen2-style or GPT-2)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read model config ({err})", file=str(path)) from None
    try:
        return spec_from_hf_dict(cfg, Path(path).parent.name or cfg.get("model_type", "model"))
    except KeyError as err:
        raise UserError(f"missing key {err.args[0]!r}", file=str(path)) from None


def spec_from_hf_dict(cfg: dict, name: str) -> ModelSpec:
    """The shape in a ``config.json`` dict, GPT-2 or Llama-style (Llama, Mistral, Qwen2); the one
    parser both the simulator and the torch adapter use.  Raises ``KeyError`` for a missing key."""
    if cfg.get("model_type") == "gpt2":
        hidden, heads = cfg["n_embd"], cfg["n_head"]
        return ModelSpec(name, cfg["n_layer"], hidden, heads, heads, hidden // heads,
                         cfg.get("n_inner") or 4 * hidden, cfg["vocab_size"],
                         bool(cfg.get("tie_word_embeddings", True)), False,
                         cfg.get("n_positions", 1024))
    heads = cfg["num_attention_heads"]
    return ModelSpec(
        name, cfg["num_hidden_layers"], cfg["hidden_size"], heads,
        cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or cfg["hidden_size"] // heads,
        cfg["intermediate_size"], cfg["vocab_size"], bool(cfg.get("tie_word_embeddings", False)),
        True, cfg.get("max_position_embeddings", 4096))


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, a ``config.json`` path, or a directory holding one."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.exists():
        return from_hf_config(path)
    raise UserError(f"unknown model {name_or_path!r} (presets: {', '.join(PRESETS)}, "
                    "or a path to a Hugging Face config.json)")
