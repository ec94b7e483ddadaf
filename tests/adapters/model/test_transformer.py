"""Our torch transformers against transformers' own, on tiny random models saved to disk: same
logits for a full forward, the same logits when decoding through our K/V cache, the same greedy
tokens; and the loader's errors name the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapters.model.hf_loader import load_hf_dir, model_from_state_dict  # noqa: E402
from adapters.model.transformer import (  # noqa: E402
    config_from_hf,
    decode_one_token,
    generate_greedy,
    prefill,
)
from sim.errors import UserError  # noqa: E402

TOL = 1e-4  # max abs logit difference in fp32
# A larger init than HF's 0.02 so that logits are O(1) and greedy argmaxes are not near-ties.
COMMON = dict(vocab_size=256, initializer_range=0.2, bos_token_id=0, eos_token_id=None,
              pad_token_id=None)
LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, rope_theta=5000.0, rms_norm_eps=1e-5, **COMMON)


def _hf_model(variant: str):
    torch.manual_seed(0)
    if variant == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **COMMON)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if variant == "mistral":  # head_dim 32 != hidden / heads, to exercise that path
        cfg = transformers.MistralConfig(**{**LLAMA, "head_dim": 32}, sliding_window=None)
        return transformers.MistralForCausalLM(cfg).eval()
    cfg = transformers.LlamaConfig(**LLAMA, tie_word_embeddings=variant == "llama-tied")
    return transformers.LlamaForCausalLM(cfg).eval()


VARIANTS = ["llama-tied", "llama-untied", "mistral", "gpt2"]


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request, tmp_path_factory):
    """(transformers' model, ours loaded from its saved directory, the directory)."""
    hf = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path, safe_serialization=True)
    return hf, load_hf_dir(path), path


def _ids(batch: int = 2, length: int = 12):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


def test_full_forward_matches_transformers(pair):
    hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert got.shape == ref.shape == (2, 12, 256)
    assert ref.abs().max() > 0.5  # not a degenerate comparison
    assert (got - ref).abs().max() <= TOL


def test_decoding_through_the_cache_matches_the_full_forward(pair):
    hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids).logits  # [B, T, V]
    cache = ours.new_cache(batch=2, max_tokens=ids.shape[1])
    steps = [prefill(ours, ids[:, :5], cache)]
    steps += [decode_one_token(ours, ids[:, t:t + 1], cache, t) for t in range(5, ids.shape[1])]
    got = torch.stack(steps, dim=1)  # [B, T - 4, V]: logits after tokens 4 .. T-1
    assert (got - ref[:, 4:]).abs().max() <= TOL


def test_chunked_prefill_matches_the_full_forward(pair):
    hf, ours, _ = pair
    ids = _ids(batch=1)
    with torch.no_grad():
        ref = hf(ids).logits
    cache = ours.new_cache(batch=1, max_tokens=12)
    first = prefill(ours, ids[:, :7], cache)
    second = prefill(ours, ids[:, 7:], cache, start=7)
    assert (first - ref[:, 6]).abs().max() <= TOL
    assert (second - ref[:, 11]).abs().max() <= TOL


def test_greedy_generation_matches_transformers(pair):
    hf, ours, _ = pair
    prompt = _ids(batch=1, length=6)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                      do_sample=False)
    got = generate_greedy(ours, prompt, 10)
    assert got.shape == (1, 16)
    assert got.tolist() == ref.tolist()


def test_a_state_dict_with_hf_names_loads(pair):
    hf, ours, path = pair
    config = json.loads((path / "config.json").read_text())
    again = model_from_state_dict(config, hf.state_dict())
    ids = _ids(batch=1)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_tied_embeddings_share_one_tensor(pair):
    _, ours, _ = pair
    tied = ours.cfg.tied_embeddings
    assert (ours.output.weight is ours.tok_embeddings.weight) == tied


def test_sharded_checkpoint_loads(tmp_path):
    hf = _hf_model("llama-untied")
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ids = _ids()
    with torch.no_grad():
        assert (load_hf_dir(tmp_path)(ids) - hf(ids).logits).abs().max() <= TOL


# -- errors name the file --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-errors")
    _hf_model("gpt2").save_pretrained(path, safe_serialization=True)
    return path


def _copy(src: Path, dst: Path, skip: str = "") -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_config_names_the_file(saved_gpt2, tmp_path):
    path = _copy(saved_gpt2, tmp_path / "m", skip="config.json")
    with pytest.raises(UserError, match="missing config.json") as err:
        load_hf_dir(path)
    assert err.value.file == str(path / "config.json")


def test_missing_weights_name_the_directory(saved_gpt2, tmp_path):
    path = _copy(saved_gpt2, tmp_path / "m", skip="model.safetensors")
    with pytest.raises(UserError, match="no \\*.safetensors") as err:
        load_hf_dir(path)
    assert err.value.file == str(path)


def test_missing_shard_names_the_shard(tmp_path):
    _hf_model("gpt2").save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match="shard") as err:
        load_hf_dir(tmp_path)
    assert err.value.file == str(shard)


def test_missing_tensor_is_named(saved_gpt2, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(saved_gpt2, tmp_path / "m")
    weights = load_file(path / "model.safetensors")
    del weights["transformer.h.1.mlp.c_fc.bias"]
    save_file(weights, path / "model.safetensors")
    with pytest.raises(UserError, match="transformer.h.1.mlp.c_fc.bias") as err:
        load_hf_dir(path)
    assert err.value.file == str(path / "model.safetensors")


def test_wrong_shape_is_a_user_error(saved_gpt2, tmp_path):
    path = _copy(saved_gpt2, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "n_inner": 100}))
    with pytest.raises(UserError, match="shape"):
        load_hf_dir(path)


@pytest.mark.parametrize(("change", "field"), [
    ({"model_type": "bert"}, "model_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_configs_are_refused_by_field(change, field):
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
           "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 256, **change}
    with pytest.raises(UserError) as err:
        config_from_hf(cfg, file="config.json")
    assert err.value.field == field


def test_old_style_rope_theta_is_read():
    cfg = config_from_hf({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                          "num_attention_heads": 4, "num_key_value_heads": 2,
                          "intermediate_size": 128, "vocab_size": 256, "rope_theta": 500000.0})
    assert (cfg.rope_theta, cfg.num_kv_heads, cfg.head_dim) == (500000.0, 2, 16)


def test_importing_adapters_loads_no_torch(repo_root):
    code = "import sys, adapters; print(sorted(m for m in sys.modules if m in ('torch', " \
           "'transformers', 'safetensors')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
