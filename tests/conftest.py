"""Fixtures shared by every test: the repository's root folder; a tiny random Llama written to
disk as a Hugging Face directory, and a small scenario file for it with dotted overrides
(``a__b=value`` sets ``doc["a"]["b"]``).

The writers are session-scoped factory fixtures: they return the writer function, so
module-scoped fixtures and Hypothesis ``@given`` tests may use them too. Neither imports torch or
transformers until a model is written, so modules that skip without them are still collected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The folder holding pyproject.toml, found from this file whatever the test's depth."""
    here = Path(__file__).resolve()
    return next(p for p in here.parents if (p / "pyproject.toml").is_file())


LLAMA = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=256, initializer_range=0.2, bos_token_id=0,
             eos_token_id=None, pad_token_id=None, max_position_embeddings=512)


def _write_llama(path: Path, seed: int = 0, layers: int = 4) -> Path:
    """A random ``LlamaForCausalLM`` of the ``LLAMA`` shape saved at ``path`` (safetensors)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**LLAMA, "num_hidden_layers": layers})
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path, safe_serialization=True)
    return path


def _write_scenario(tmp_path: Path, target: Path, name: str, **extra) -> Path:
    """``tmp_path/scn.yaml``: 5 random-text requests on ``target``, batch <= 3, FP32 KV, then
    ``extra`` (dotted with ``__``) applied."""
    doc = {
        "name": name, "seed": 3,
        "model": {"spec": str(target)},
        "hardware": "cpu-2core-avx512",
        "workload": {"arrival": {"kind": "closed", "concurrency": 3}, "num_requests": 5,
                     "prompt_tokens": {"kind": "uniform", "low": 20, "high": 70},
                     "output_tokens": {"kind": "uniform", "low": 10, "high": 30},
                     "prompt_text": "random"},
        "engine": {"max_batch": 3, "block_tokens": 16, "kv_quant_group": 16},
        "backend": {"device": "cpu", "dtype": "float32", "kv_dtype": "float32"},
        "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "adaptive"},
                     "speculation": {"kind": "off"},
                     "scheduling": {"kind": "single", "device": "cpu"}},
    }
    for dotted, value in extra.items():
        node = doc
        *head, last = dotted.split("__")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "scn.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def write_llama() -> Callable[..., Path]:
    """``write_llama(path, seed=0, layers=4) -> path``: a tiny random Llama saved at ``path``."""
    return _write_llama


@pytest.fixture(scope="session")
def write_scenario() -> Callable[..., Path]:
    """``write_scenario(tmp_path, target, name, **extra) -> tmp_path / "scn.yaml"``."""
    return _write_scenario
