"""The ONNX export round trip: onnxruntime (CPU) gives the torch adapter's logits for a prefill and
decode steps with the present K/V fed back, also for a padded batch, for the rows asked for; the
graph's measured attention equals the paged cache's; exports are cached on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from adapters.model.hf_loader import load_hf_dir  # noqa: E402
from adapters.model.transformer import greedy  # noqa: E402
from adapters.ort_backend.export import cache_root, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, write_llama):
    root = tmp_path_factory.mktemp("onnx")
    model = load_hf_dir(write_llama(root / "model", 0, layers=2))
    export = export_onnx(model, root=root / "cache")
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    return model, export, session, root / "cache"


def _empty_past(model, batch: int) -> np.ndarray:
    c = model.cfg
    return np.zeros((c.num_layers, batch, c.num_kv_heads, 0, c.head_dim), np.float32)


def test_prefill_then_two_decode_steps_match_torch(exported):
    model, _, session, _ = exported
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (1, 9), generator=gen)
    cache = model.new_cache(1, 16)
    past_k = past_v = _empty_past(model, 1)
    start = 0
    for _ in range(3):  # prefill (9 tokens), then two decode steps of one token
        T = tokens.shape[1]
        positions = torch.arange(start, start + T)
        with torch.inference_mode():
            want = model(tokens, cache, positions)  # [1, T, V]
        logits, past_k, past_v = session.run(None, {
            "input_ids": tokens.numpy(), "positions": positions[None].numpy(),
            "attention_mask": np.ones((1, start + T), np.int64),
            "past_k": past_k, "past_v": past_v, "logit_rows": np.arange(T)})
        assert np.abs(logits - want.numpy()).max() <= 1e-4
        start += T
        assert past_k.shape == (2, 1, 2, start, 16) == past_v.shape
        tokens = greedy(want[:, -1])


def test_padded_batch_rows_match_single_sequences(exported):
    """Two sequences of 5 and 3 past tokens decode together: the shorter one's past is padded at
    the end with masked slots, its positions stay its own."""
    model, _, session, _ = exported
    run = lambda ids, pos, mask, pk, pv: session.run(None, {  # noqa: E731
        "input_ids": ids, "positions": pos, "attention_mask": mask, "past_k": pk, "past_v": pv,
        "logit_rows": np.array([ids.shape[1] - 1])})
    prompts = [np.arange(10, 15)[None], np.arange(40, 43)[None]]
    singles, pasts = [], []
    for p in prompts:
        n = p.shape[1]
        _, pk, pv = run(p, np.arange(n)[None], np.ones((1, n), np.int64), _empty_past(model, 1),
                        _empty_past(model, 1))
        logits, _, _ = run(np.array([[7]]), np.array([[n]]), np.ones((1, n + 1), np.int64),
                           pk, pv)
        singles.append(logits[0, -1])
        pasts.append((pk, pv))
    pad = lambda a: np.pad(a, [(0, 0)] * 3 + [(0, 5 - a.shape[3]), (0, 0)])  # noqa: E731
    pk = np.concatenate([pad(k) for k, _ in pasts], axis=1)
    pv = np.concatenate([pad(v) for _, v in pasts], axis=1)
    mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 1]], np.int64)
    logits, _, _ = run(np.array([[7], [7]]), np.array([[5], [3]]), mask, pk, pv)
    assert np.abs(logits[:, -1] - np.stack(singles)).max() <= 1e-4


def test_second_export_reuses_the_cache(exported):
    model, first, _, root = exported
    assert not first.is_reused
    assert (first.path.parent / "model.onnx.data").stat().st_size > 0  # external weights kept
    stamp = first.path.stat().st_mtime_ns
    again = export_onnx(model, root=root)
    assert again.is_reused and again.path == first.path
    assert again.path.stat().st_mtime_ns == stamp
    assert [p.name for p in root.iterdir()] == [first.key]  # no temporary folder left behind


def test_cache_root_follows_infer_os_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INFER_OS_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "onnx"
    monkeypatch.delenv("INFER_OS_CACHE")
    assert cache_root() == Path.home() / ".cache" / "infer-os" / "onnx"


def test_gpt2_round_trip(tmp_path):
    """GPT-2 (learned positions, LayerNorm, GELU, biases) exports too: prefill then one decode
    step, last position only (the graph the executor uses)."""
    torch.manual_seed(2)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(tmp_path / "g")
    model = load_hf_dir(tmp_path / "g")
    export = export_onnx(model, root=tmp_path / "cache")
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    tokens, cache, start = torch.arange(3, 9)[None], model.new_cache(1, 8), 0
    past_k = past_v = _empty_past(model, 1)
    for _ in range(2):
        T = tokens.shape[1]
        positions = torch.arange(start, start + T)
        with torch.inference_mode():
            want = model(tokens, cache, positions)[:, -1:]  # [1, 1, V]
        logits, past_k, past_v = session.run(None, {
            "input_ids": tokens.numpy(), "positions": positions[None].numpy(),
            "attention_mask": np.ones((1, start + T), np.int64),
            "past_k": past_k, "past_v": past_v, "logit_rows": np.array([T - 1])})
        assert logits.shape == (1, 1, 256)
        assert np.abs(logits - want.numpy()).max() <= 1e-4
        start += T
        tokens = greedy(want[:, -1])


def test_observed_attention_equals_the_paged_caches(tmp_path, write_llama):
    """``observe=True`` adds the ``attention`` output: per row, the probabilities of the step's
    queries averaged over heads and queries, summed over layers, as ``PagedStep`` measures them
    in torch (here over a prefill of 7 tokens)."""
    from adapters.kv.paged import PagedKV
    from adapters.kv.paged_step import PagedStep

    model = load_hf_dir(write_llama(tmp_path / "m", 3, layers=2))
    export = export_onnx(model, torch.float32, root=tmp_path / "cache", observe=True)
    session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    ids = torch.arange(20, 27)[None]
    logits, _, _, att = session.run(None, {
        "input_ids": ids.numpy(), "positions": np.arange(7)[None],
        "attention_mask": np.ones((1, 7), np.int64), "past_k": _empty_past(model, 1),
        "past_v": _empty_past(model, 1), "logit_rows": np.array([6])})
    c = model.cfg
    kv = PagedKV(num_layers=c.num_layers, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                 block_tokens=4, dtype=torch.float32)
    kv.add(0, 8)
    step = PagedStep(kv, [0], 7, torch.float32, measure_attention=True)
    with torch.inference_mode():
        want = model(ids, step, torch.arange(7)[None])
    assert np.abs(logits[0, -1] - want[0, -1].numpy()).max() <= 1e-4
    assert att.shape == (1, 7)
    assert np.abs(att[0] - step._probs[0].numpy()).max() <= 1e-5
    assert abs(att.sum() - c.num_layers) <= 1e-4  # each layer's probabilities sum to 1
