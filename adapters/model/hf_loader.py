"""Load a local Hugging Face model directory (``config.json`` + ``*.safetensors``, one file or
sharded with ``model.safetensors.index.json``) into our ``Transformer``.  Nothing is downloaded.

HF parameter names are mapped onto ours here; GPT-2's Conv1D weights are stored [in, out] and are
transposed to nn.Linear's [out, in]; Llama's q/k/v projections are concatenated into one wqkv.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from adapters.model.transformer import ModelConfig, Transformer, config_from_hf
from sim.errors import UserError

Getter = Callable[[str], torch.Tensor]  # HF parameter name -> tensor


class MissingWeight(KeyError):
    """A parameter the config requires is absent from the weights."""


# -- HF names -> our names ------------------------------------------------------------------------
def convert_hf_weights(cfg: ModelConfig, get: Getter, has: Callable[[str], bool]
                       ) -> dict[str, torch.Tensor]:
    """Our state dict (names of ``Transformer``) from HF-named tensors."""
    weights = dict(_gpt2_weights(cfg, get, has) if cfg.arch == "gpt2"
                   else _llama_weights(cfg, get, has))
    weights["output.weight"] = weights["tok_embeddings.weight"] if cfg.tied_embeddings \
        else get("lm_head.weight")
    return weights


def _llama_weights(cfg: ModelConfig, get: Getter, has: Callable[[str], bool]
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    p = "model." if has("model.embed_tokens.weight") else ""  # LlamaForCausalLM vs LlamaModel
    yield "tok_embeddings.weight", get(f"{p}embed_tokens.weight")
    yield "norm.weight", get(f"{p}norm.weight")
    for i in range(cfg.num_layers):
        hf, ours = f"{p}layers.{i}.", f"layers.{i}."
        yield f"{ours}attn_norm.weight", get(f"{hf}input_layernorm.weight")
        yield f"{ours}ffn_norm.weight", get(f"{hf}post_attention_layernorm.weight")
        suffixes = ("weight", "bias") if cfg.attention_bias else ("weight",)
        for s in suffixes:
            yield f"{ours}attn.wqkv.{s}", torch.cat(
                [get(f"{hf}self_attn.{x}_proj.{s}") for x in "qkv"])  # [q | k | v] rows
            yield f"{ours}attn.wo.{s}", get(f"{hf}self_attn.o_proj.{s}")
        for s in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            yield f"{ours}ffn.w1.{s}", get(f"{hf}mlp.gate_proj.{s}")
            yield f"{ours}ffn.w2.{s}", get(f"{hf}mlp.down_proj.{s}")
            yield f"{ours}ffn.w3.{s}", get(f"{hf}mlp.up_proj.{s}")


def _gpt2_weights(cfg: ModelConfig, get: Getter, has: Callable[[str], bool]
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    p = "transformer." if has("transformer.wte.weight") else ""  # GPT2LMHeadModel vs GPT2Model
    yield "tok_embeddings.weight", get(f"{p}wte.weight")
    yield "pos_embeddings.weight", get(f"{p}wpe.weight")
    yield "norm.weight", get(f"{p}ln_f.weight")
    yield "norm.bias", get(f"{p}ln_f.bias")
    renames = {"ln_1": "attn_norm", "ln_2": "ffn_norm"}
    conv1d = {"attn.c_attn": "attn.wqkv", "attn.c_proj": "attn.wo",
              "mlp.c_fc": "ffn.w1", "mlp.c_proj": "ffn.w2"}
    for i in range(cfg.num_layers):
        hf, ours = f"{p}h.{i}.", f"layers.{i}."
        for a, b in renames.items():
            yield f"{ours}{b}.weight", get(f"{hf}{a}.weight")
            yield f"{ours}{b}.bias", get(f"{hf}{a}.bias")
        for a, b in conv1d.items():
            yield f"{ours}{b}.weight", get(f"{hf}{a}.weight").t()  # Conv1D [in, out] -> [out, in]
            yield f"{ours}{b}.bias", get(f"{hf}{a}.bias")


def check_finite(tensor: torch.Tensor, name: str, file: str | None) -> torch.Tensor:
    """``tensor``, if all its values are finite; NaN or inf in a weight is a damaged file."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"tensor {name!r} holds NaN or infinite values (a damaged file?)",
                        file=file)
    return tensor


# -- building a model from weights ----------------------------------------------------------------
def build_model(cfg: ModelConfig, get: Getter, has: Callable[[str], bool], *,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                source: str | None = None) -> Transformer:
    """A ``Transformer`` in eval mode holding the converted weights (no random init: the modules
    are built on the meta device and the tensors assigned).  ``source`` names the file in errors."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    try:
        weights = convert_hf_weights(cfg, get, has)
    except MissingWeight as err:
        raise UserError(f"missing weight tensor {err.args[0]!r}", file=source) from None
    for name, t in weights.items():
        if t.shape != expected[name].shape:
            raise UserError(f"weight for {name!r} has shape {tuple(t.shape)}, the config implies "
                            f"{tuple(expected[name].shape)}", file=source)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    if cfg.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight  # assign=True gave two Parameters
    return model.eval()


def model_from_state_dict(config: dict[str, Any], state_dict: dict[str, torch.Tensor], *,
                          dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu",
                          source: str | None = None) -> Transformer:
    """Our model from a ``config.json`` dict and a state dict with HF parameter names;
    ``source`` (the file they came from) is named in errors."""
    def get(name: str) -> torch.Tensor:
        if name not in state_dict:
            raise MissingWeight(name)
        return state_dict[name]

    return build_model(config_from_hf(config, file=source), get, state_dict.__contains__,
                       dtype=dtype, device=device, source=source)


# -- the directory --------------------------------------------------------------------------------
def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; a ``UserError`` naming it if it is missing,
    not UTF-8, not JSON or not a JSON object."""
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise UserError("not a model directory", file=str(model_dir))
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError("missing config.json", file=str(path)) from None
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"cannot read model config ({err})", file=str(path)) from None
    if not isinstance(config, dict):
        raise UserError(f"expected a JSON object, got {type(config).__name__}", file=str(path))
    return config


def weight_files(model_dir: Path) -> tuple[dict[str, Path], str]:
    """Map each tensor name to its safetensors file; also the file to name in errors."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"bad safetensors index ({err})", file=str(index)) from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) for f in weight_map.values()):
            raise UserError("expected an object of tensor name -> file name", file=str(index),
                            field="weight_map")
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).exists():
                raise UserError("weight shard listed in the index is missing",
                                file=str(model_dir / shard))
        return {name: model_dir / f for name, f in weight_map.items()}, str(index)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
            p.name for p in model_dir.glob("*.gguf"))
        hint = f" (found {', '.join(other)}; convert to safetensors)" if other else ""
        raise UserError(f"no *.safetensors weights{hint}", file=str(model_dir))
    names: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                names.update(dict.fromkeys(handle.keys(), f))
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise UserError(f"cannot read safetensors file ({err})", file=str(f)) from None
    return names, str(files[0]) if len(files) == 1 else str(model_dir)


def load_hf_dir(model_dir: str | Path, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Transformer:
    """Our ``Transformer`` for a local HF directory; a ``UserError`` naming the file if anything
    is missing or malformed."""
    model_dir = Path(model_dir)
    cfg = config_from_hf(read_config(model_dir), file=str(model_dir / "config.json"))
    where, source = weight_files(model_dir)
    handles: dict[Path, Any] = {}

    def get(name: str) -> torch.Tensor:
        if name not in where:
            raise MissingWeight(name)
        f = where[name]
        try:
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt")
            tensor = handles[f].get_tensor(name)
        except Exception as err:  # corrupt or truncated file
            raise UserError(f"cannot read tensor {name!r} ({err})", file=str(f)) from None
        return check_finite(tensor, name, str(f))

    return build_model(cfg, get, where.__contains__, dtype=dtype, device=device, source=source)
