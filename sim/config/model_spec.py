"""Transformer model specs: built-in presets and import from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from sim.config.frozen import MAX_LAYERS, MAX_TOKENS
from sim.config.paths import exists
from sim.config.yaml_io import load_json
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


# Bounds of a config.json's sizes (docs/simulator-notes.md#limits-and-validation): well above any
# published model (hidden 25,600, FFN 4 x that, vocabularies of 256k), low enough that parameter
# and byte counts stay exact in float64.
MAX_HIDDEN = 2**18  # also bounds heads and key/value heads
MAX_HEAD_DIM = 2**14
MAX_FFN_HIDDEN = 2**20
MAX_VOCAB = 2**24
_REQUIRED = object()


def from_hf_config(path: Path) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (Llama/Mistral/Qwen2-style or GPT-2)."""
    cfg = load_json(path, "model config")
    if not isinstance(cfg, dict):
        raise UserError("expected a JSON object (a Hugging Face config.json)", file=str(path))
    return spec_from_hf_dict(cfg, Path(path).parent.name or str(cfg.get("model_type", "model")),
                             file=str(path))


def spec_from_hf_dict(cfg: dict, name: str, file: str | None = None) -> ModelSpec:
    """The shape in a ``config.json`` dict, GPT-2 or Llama-style (Llama, Mistral, Qwen2); the one
    parser both the simulator and the torch adapter use.  Every key read is checked (a positive
    integer within bounds, flags true or false; heads divide the hidden size unless ``head_dim``
    is given, key/value heads divide heads); ``UserError`` at ``file`` with a line per bad key."""
    r = _Reader(cfg, file)
    kind = cfg.get("model_type")
    if kind is not None and not isinstance(kind, str):
        r.fail("model_type", f"expected a string, got {_shown(kind)}")
    gpt2 = kind == "gpt2"
    # (key in a GPT-2 config, key in a Llama-style one)
    key_hidden, key_heads = ("n_embd", "n_head") if gpt2 else ("hidden_size", "num_attention_heads")
    hidden, heads = r.size(key_hidden, MAX_HIDDEN), r.size(key_heads, MAX_HIDDEN)
    if gpt2:
        kv_heads, head_dim = heads, None
        layers, ffn = r.size("n_layer", MAX_LAYERS), r.size("n_inner", MAX_FFN_HIDDEN, 4 * hidden)
        context = r.size("n_positions", MAX_TOKENS, 1024)
    else:
        kv_heads = r.size("num_key_value_heads", MAX_HIDDEN, heads)
        head_dim = r.size("head_dim", MAX_HEAD_DIM, None)
        layers = r.size("num_hidden_layers", MAX_LAYERS)
        ffn = r.size("intermediate_size", MAX_FFN_HIDDEN)
        context = r.size("max_position_embeddings", MAX_TOKENS, 4096)
    vocab, tied = r.size("vocab_size", MAX_VOCAB), r.flag("tie_word_embeddings", gpt2)
    if head_dim is None and not r.bad & {key_hidden, key_heads} and hidden % heads:
        r.fail(key_heads, f"{heads} heads do not divide the hidden size {hidden}")
    if not r.bad & {key_heads, "num_key_value_heads"} and heads % kv_heads:
        r.fail("num_key_value_heads", f"{kv_heads} key/value heads do not divide {heads} heads")
    if r.errors:
        raise UserError.collect(r.errors)
    return ModelSpec(name, layers, hidden, heads, kv_heads, head_dim or hidden // heads, ffn,
                     vocab, tied, not gpt2, context)


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Reader:
    """A config.json's values, each checked as read; the problems collected (``errors``), the
    keys that had one in ``bad``."""

    def __init__(self, cfg: dict, file: str | None):
        self.cfg, self.file = cfg, file
        self.errors: list[UserError] = []
        self.bad: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        self.errors.append(UserError(message, file=self.file, field=key))
        self.bad.add(key)

    def size(self, key: str, maximum: int, default: object = _REQUIRED) -> int:
        """An integer in 1..maximum; ``default`` when absent or null (a required key when
        none).  A bad value is reported and read as 1."""
        value = self.cfg.get(key)
        if value is None and default is not _REQUIRED:
            return default  # type: ignore[return-value]
        if value is None:
            self.fail(key, "expected an integer, got null" if key in self.cfg else "missing key")
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            self.fail(key, f"expected an integer in 1..{maximum:,}, got {_shown(value)}")
        else:
            return value
        return 1

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_shown(value)}")
            return default
        return value


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, a ``config.json`` path, or a directory holding one."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if exists(path) and path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and exists(path):
        return from_hf_config(path)
    raise UserError(f"unknown model {name_or_path!r} (presets: {', '.join(PRESETS)}, "
                    "or a path to a Hugging Face config.json)")
