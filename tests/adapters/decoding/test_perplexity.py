"""Perplexity through the tiered paged KV store: FP16 tiering equals a plain forward; quantized
tiers cost perplexity in precision order; eviction saves memory."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from adapters.decoding.perplexity import tiered_nll  # noqa: E402
from adapters.model.transformer import ModelConfig, Transformer  # noqa: E402
from policies import Fp16Tiering, Precision, UniformTiering  # noqa: E402
from policies.tiering_baselines import StreamingTiering  # noqa: E402

CFG = ModelConfig("llama", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, head_dim=16,
                  ffn_hidden=128, vocab=64, tied_embeddings=False, norm_eps=1e-5,
                  max_positions=4096)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    # a text with structure the model's context matters for: a repeated random phrase
    phrase = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    return model, (phrase * 10)[:384]


def _run(setup, policy, kv_dtype=torch.float16, **kw):
    model, ids = setup
    return tiered_nll(model, ids, policy, block_tokens=16, group=16, chunk=32, eval_from=64,
                      kv_dtype=kv_dtype, **kw)


def test_fp16_tiering_equals_the_plain_forward(setup):
    model, ids = setup
    got = _run(setup, Fp16Tiering(), kv_dtype=torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0]
    nll = torch.nn.functional.cross_entropy(logits[64:-1], torch.tensor(ids[65:]), reduction="sum")
    assert got.num_scored == len(ids) - 65
    assert math.isclose(got.nll_sum, float(nll), rel_tol=1e-4)
    assert got.kv_saved_frac == pytest.approx(-1.0)  # fp32 storage: twice FP16
    assert _run(setup, Fp16Tiering()).kv_saved_frac == pytest.approx(0.0, abs=1e-9)


def test_lower_precision_costs_more_and_saves_more(setup):
    runs = {p: _run(setup, UniformTiering(precision=p.name.lower())) for p in
            (Precision.INT8, Precision.INT4, Precision.INT2)}
    fp16 = _run(setup, Fp16Tiering())
    ppl = [fp16.ppl] + [runs[p].ppl for p in (Precision.INT8, Precision.INT4, Precision.INT2)]
    delta = [abs(x - ppl[0]) for x in ppl[1:]]  # a random model: small, but ordered
    assert 0 < delta[0] < delta[1] < delta[2]
    saved = [runs[p].kv_saved_frac for p in (Precision.INT8, Precision.INT4, Precision.INT2)]
    assert 0.3 < saved[0] < saved[1] < saved[2] < 1
    assert runs[Precision.INT4].kv_bytes_by_precision["int4"] > 0


def test_streaming_evicts_the_middle(setup):
    got = _run(setup, StreamingTiering(sink_tokens=16, window_tokens=64))
    assert got.kv_saved_frac > 0.5
    assert got.moves.get("evict", 0) > 0
