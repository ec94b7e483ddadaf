"""The ONNX Runtime executor under the engine (``infer-os measure --backend ort``) on a tiny random
Llama: every request completes with its forced length and the torch backend's greedy output, with
and without IOBinding; bound buffers are reused across steps; tiering policies quantize the same
blocks as under torch, observing policies see the graph's measured attention, speculation keeps
the greedy output; unsupported setups and missing providers or packages are one-line errors with
exit 2 or 3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sim.cli import main  # noqa: E402
from sim.config.scenario import resolve_runs  # noqa: E402
from sim.run.runner import run_scenario  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, write_llama):
    return write_llama(tmp_path_factory.mktemp("models") / "target", 0, layers=2)


@pytest.fixture(autouse=True, scope="module")
def onnx_cache(tmp_path_factory):
    """Exports go to a per-module cache (the first test exports, the others reuse it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFER_OS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def scenario(write_scenario):
    """``scenario(tmp_path, target, **extra)``: the tiny scenario named ``tiny-ort``."""
    def make(tmp_path: Path, target: Path, **extra) -> Path:
        return write_scenario(tmp_path, target, "tiny-ort", **extra)
    return make


def _measure(path: Path, backend: str):
    [(variant, scn)] = resolve_runs(path, [])
    return run_scenario(scn, variant, None, path.parent, backend=backend)


def _outputs(out) -> dict[int, list[int]]:
    ex = out.executor
    return {rid: ex.finished[rid][:len(ex.prompts[rid]) + int(out.requests.output_tokens[rid])]
            for rid in range(len(ex.prompts))}


@pytest.fixture(scope="module")
def torch_run(model_dir, tmp_path_factory, scenario):
    return _measure(scenario(tmp_path_factory.mktemp("torch"), model_dir), "torch")


@pytest.mark.parametrize("binding", [True, False])
def test_greedy_run_equals_the_torch_backend(model_dir, torch_run, tmp_path, binding, scenario):
    out = _measure(scenario(tmp_path, model_dir, backend__ort_binding=binding), "ort")
    m = out.metrics
    assert m["num_completed"] == 5 and m["num_failed"] == 0
    assert m["output_tokens"] == int(out.requests.output_tokens.sum())
    assert m["engine"]["max_batch"] >= 2  # continuous batching really batched
    assert _outputs(out) == _outputs(torch_run)
    assert m["kv_bytes_by_precision"]["fp16"] == m["kv_peak_bytes"] > 0
    assert m["measured"]["device"].endswith("CPUExecutionProvider")


def test_binding_reuses_its_buffers_across_steps(model_dir, tmp_path, scenario):
    out = _measure(scenario(tmp_path, model_dir, policies__buffers={"kind": "pow2"}), "ort")
    ex = out.executor
    assert ex.num_runs > 30
    assert 0 < ex.arrays.num_allocs < ex.num_runs / 2  # most steps run in reused memory
    assert ex.pool.stats.num_reuses > ex.pool.stats.num_allocs


def test_the_warm_up_runs_through_iobinding_before_the_run_and_outside_its_counters(
        model_dir, tmp_path, scenario, monkeypatch):
    """``warm_up`` runs the session once through IOBinding over a scratch pool (ONNX Runtime's
    first bound run and the first touch of the staging arrays' memory are paid before any step
    is measured); the run's own pool and run count are the run's alone."""
    from adapters.ort_backend.executor import OrtExecutor

    calls = []
    run = OrtExecutor._run

    def spy(self, feeds, B, S, arrays=None, session=None):
        out = run(self, feeds, B, S, arrays, session)
        calls.append((arrays is None, self.arrays.num_allocs, self.arrays.buffers.stats.num_allocs))
        return out
    monkeypatch.setattr(OrtExecutor, "_run", spy)
    out = _measure(scenario(tmp_path, model_dir), "ort")
    assert calls[0] == (False, 0, 0)  # the warm-up's bound run came first, in its own pool
    assert [c[0] for c in calls[1:]] == [True] * (len(calls) - 1)
    assert out.executor.num_runs == len(calls) - 1 > 10
    assert out.executor.arrays.num_allocs > 0


def test_measure_json_with_ort(model_dir, tmp_path, capsys, scenario):
    path = scenario(tmp_path, model_dir)
    assert main(["measure", str(path), "--backend", "ort", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "ort" and doc["runs"][0]["metrics"]["num_completed"] == 5


@pytest.mark.parametrize("override, field", [
    (["backend.kv_dtype=bfloat16"], "backend.kv_dtype"),
    (["backend.device=cuda"], "backend.device")])
def test_unsupported_setups_are_user_errors(model_dir, tmp_path, capsys, override, field, scenario):
    path = scenario(tmp_path, model_dir)
    sets = [arg for o in override for arg in ("--set", o)]
    assert main(["measure", str(path), "--backend", "ort", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and field in err


@pytest.mark.parametrize("command", ["measure", "validate"])
@pytest.mark.parametrize("backend, provider", [("ort-migraphx", "MIGraphXExecutionProvider"),
                                               ("ort-vitisai", "VitisAIExecutionProvider")])
def test_missing_provider_exits_3_listing_what_is_available(model_dir, tmp_path, capsys,
                                                            backend, provider, command, scenario):
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is installed here")
    assert main([command, str(scenario(tmp_path, model_dir)), "--backend", backend]) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and provider in err and "CPUExecutionProvider" in err


def test_missing_onnxruntime_exits_3_naming_the_package(model_dir, tmp_path, capsys,
                                                         monkeypatch, scenario):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    monkeypatch.delitem(sys.modules, "adapters.ort_backend.executor", raising=False)
    assert main(["measure", str(scenario(tmp_path, model_dir)), "--backend", "ort"]) == 3
    err = capsys.readouterr().err.strip()
    assert "onnxruntime" in err and "infer-os[onnx]" in err


def test_float16_kv_equals_the_torch_backend(model_dir, tmp_path, scenario):
    """The default FP tier: K/V stored at float16 by both backends, the same greedy output and
    the same true KV bytes."""
    path = scenario(tmp_path, model_dir, backend__kv_dtype="float16")
    ours, theirs = _measure(path, "ort"), _measure(path, "torch")
    assert _outputs(ours) == _outputs(theirs)
    assert ours.metrics["kv_peak_bytes"] == theirs.metrics["kv_peak_bytes"] > 0


def test_quantized_tiers_hold_the_same_bytes_as_under_torch(model_dir, tmp_path, scenario):
    """uniform INT4: the same blocks quantized into the same bytes by both backends (the ort
    executor stores K/V in the shared paged store and dequantizes them into the graph's past)."""
    path = scenario(tmp_path, model_dir,
                    policies__tiering={"kind": "uniform", "precision": "int4"})
    ours, theirs = _measure(path, "ort"), _measure(path, "torch")
    assert ours.metrics["num_completed"] == 5
    got, want = ours.metrics["kv_bytes_by_precision"], theirs.metrics["kv_bytes_by_precision"]
    assert got["int4"] > 0 and got == want
    assert ours.metrics["kv_peak_bytes"] == theirs.metrics["kv_peak_bytes"]


def test_an_observing_policy_reads_the_graphs_attention(model_dir, tmp_path, monkeypatch, scenario):
    """The paper's progressive tiering observes blocks: the graph is exported with its
    attention output and every step records measured shares that sum to 1 per row."""
    from sim.quality.attention import MeasuredAttention

    sums: list[float] = []
    record = MeasuredAttention.record
    monkeypatch.setattr(MeasuredAttention, "record",
                        lambda self, rid, shares: (sums.append(float(shares.sum())),
                                                   record(self, rid, shares)))
    path = scenario(tmp_path, model_dir, policies__tiering={"kind": "progressive"},
                    workload__output_tokens={"kind": "uniform", "low": 60, "high": 80})
    out = _measure(path, "ort")
    assert out.metrics["num_completed"] == 5
    steps = out.metrics["engine"]
    assert len(sums) >= steps["num_prefill_steps"] + steps["num_decode_steps"]
    assert all(abs(s - 1) < 1e-6 for s in sums)
    assert out.metrics["kv_bytes_by_precision"]["int8"] > 0  # it demoted blocks on them


@pytest.mark.parametrize("source", ["ngram", "layer-skip"])
def test_speculation_keeps_the_greedy_output(model_dir, tmp_path, source, scenario):
    plain = _measure(scenario(tmp_path, model_dir), "ort")
    path = scenario(tmp_path, model_dir, policies__speculation={"kind": "fixed", "k": 3},
                    speculation={"draft_source": source, "draft_layers": 1})
    spec = _measure(path, "ort")
    assert spec.metrics["num_completed"] == 5
    assert _outputs(spec) == _outputs(plain)
    ex = spec.executor
    assert ex.draft_accepted + ex.draft_rejections + ex.draft_empty > 0  # it drafted


def test_phases_run_on_the_session_of_the_device_they_are_placed_on(model_dir, torch_run, tmp_path,
                                                                    monkeypatch, scenario):
    """``ort-vitisai`` holds a session on the NPU and one on the CPU; a static placement runs
    prefill on the first and decode on the second.  No NPU here: the NPU's session is given the
    CPU provider (the one stand-in), everything else is the real code path, static shapes (the
    past padded to power-of-two buckets, the padding masked) included."""
    from adapters.ort_backend import providers as ort_providers

    monkeypatch.setitem(ort_providers.BACKEND_PROVIDERS, "ort-vitisai",
                        ort_providers.CPU_EP)
    path = scenario(tmp_path, model_dir, hardware="ryzen-ai-9-hx-370",
                    backend__ort_static_shapes=True,
                    policies__scheduling={"kind": "static", "prefill": "npu",
                                          "decode_attention": "cpu", "decode_ffn": "cpu"})
    out = _measure(path, "ort-vitisai")
    ex, m = out.executor, out.metrics
    assert m["num_completed"] == 5
    assert set(ex.runs_by_device) == {"npu", "cpu"}
    assert ex.runs_by_device["npu"] == 5  # one prefill per request
    assert ex.runs_by_device["cpu"] == m["engine"]["num_decode_steps"]
    assert _outputs(out) == _outputs(torch_run)  # padded to buckets: the same greedy output


def test_a_bf16_prepared_model_runs_on_the_cpu_provider(model_dir, tmp_path, scenario):
    """``backend.ort_quantize: bf16`` (the Ryzen AI NPU's default preparation) on the CPU
    provider, to see its effect without the NPU."""
    out = _measure(scenario(tmp_path, model_dir, backend__ort_quantize="bf16"), "ort")
    assert out.metrics["num_completed"] == 5
    assert out.metrics["measured"]["device"].endswith("(bf16)")


@pytest.mark.parametrize("chunk", [1 << 18, 600])  # all layers in one call, or one by one
def test_staging_dequantizes_every_layer_as_the_paged_store_reads_it(monkeypatch, chunk):
    """The past the graph gets: per row, exactly what ``PagedKV.layer_kv`` returns for every
    layer (INT8/INT4/INT2 segments dequantized all layers at once, then the FP arena), the
    padding zeroed and masked."""
    import numpy as np

    from adapters.kv.paged import PagedKV
    from adapters.ort_backend import executor as ort_executor
    from adapters.ort_backend.executor import OrtExecutor
    from policies import Precision

    monkeypatch.setattr(ort_executor, "DEQUANT_CHUNK", chunk)

    with torch.inference_mode():
        kv = PagedKV(num_layers=3, num_kv_heads=2, head_dim=8, block_tokens=16, group=16)
        gen = torch.Generator().manual_seed(0)
        for rid, n in ((0, 70), (1, 40)):
            kv.add(rid, n + 8)
            kv.requests[rid].arena[:, :, :, :n].normal_(generator=gen)
            kv.append(rid, n)
        for rid, block, prec in ((0, 0, "INT4"), (0, 2, "INT8"), (0, 1, "INT4"), (1, 1, "INT2")):
            kv.set_precision(rid, block, Precision[prec])
        resident = [kv.resident_tokens(0), kv.resident_tokens(1)]
        P = max(resident)
        past = torch.full((2, 3, 2, 2, P, 8), 7.0, dtype=torch.float16)
        mask = np.full((2, P + 1), 9, np.int64)
        OrtExecutor._stage(type("Ex", (), {"kv": kv})(), [0, 1], resident, past, mask)
        for b in (0, 1):
            for layer in range(3):
                k, v = kv.layer_kv(b, layer)
                assert torch.equal(past[0, layer, b, :, :resident[b]], k)
                assert torch.equal(past[1, layer, b, :, :resident[b]], v)
            assert (past[:, :, b, :, resident[b]:] == 0).all()
            assert mask[b].tolist() == [1] * resident[b] + [0] * (P - resident[b]) + [1]


def test_static_shapes_are_few_and_never_smaller():
    from adapters.ort_backend.executor import Shapes

    true = Shapes()
    assert [true.batch(3), true.new(5), true.past(70)] == [3, 5, 70]
    sh = Shapes(True, lambda n: max(64, 1 << (n - 1).bit_length()))
    assert [sh.batch(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]
    assert [sh.new(n) for n in (1, 2, 3, 5, 9, 17, 100)] == [1, 2, 4, 8, 16, 64, 128]
    assert len({sh.new(n) for n in range(1, 1025)}) == 10  # 1, 2, 4, 8, 16, 64 ... 1024
