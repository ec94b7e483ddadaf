"""The server's life: a dashboard in headless Chromium fed by real traffic; SIGTERM with a
request in flight (it finishes, the recording is written, exit 0); the recording predicted by
``infer-os validate --trace``; speculation with sampling through the server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from tests.adapters.serving.conftest import MODEL, start_server
from tests.adapters.serving.dashboard_browser import open_dashboard, require_chromium


@pytest.fixture(scope="module")
def recorded(scenario_file, tmp_path_factory):
    """A server of the tiered, speculating variant, recording; stopped by the test below."""
    folder = tmp_path_factory.mktemp("recording")
    srv = start_server(scenario_file, "--variant", "tiered-spec", "--record", str(folder),
                       "--record-text", "--drain-timeout", "60")
    yield srv, folder
    if srv.proc.poll() is None:
        srv.proc.kill()


def _traffic(srv, n: int, stop: threading.Event | None = None) -> list:
    client, done = srv.client(), []
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        done.append(client.completions.create(
            model=MODEL, prompt=f"The tale of the {i}th knight, who rode", max_tokens=20 + 4 * i,
            temperature=0.7 if i % 2 else 0, seed=i, extra_body={"ignore_eos": True}))
    return done


def test_dashboard_draws_live_data(recorded, tmp_path):
    require_chromium()
    srv, _ = recorded
    stop = threading.Event()
    out: list = []
    driver = threading.Thread(target=lambda: out.extend(_traffic(srv, 6, stop)))
    driver.start()
    try:
        seen = open_dashboard(srv.url + "/", tmp_path / "dashboard.png", min_polls=6,
                              timeout_s=120)
    finally:
        stop.set()
        driver.join(300)
    assert seen["console_errors"] == []
    assert all(n >= 1 for n in seen["plotly_traces"].values()), seen["plotly_traces"]
    points = seen["state"]["points"]
    assert points["chart-tok-s"] > 0 and points["chart-kv"] > 0 and points["chart-timeline"] > 0
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_speculation_and_sampling_through_the_server(recorded):
    srv, _ = recorded
    outs = _traffic(srv, 4)
    assert [o.usage.completion_tokens for o in outs] == [20, 24, 28, 32]
    with open_metrics(srv) as text:
        proposed = _counter(text, "infer_os:spec_decode_num_draft_tokens_total")
    assert proposed > 0  # the dynamic speculation policy drafted, live


def test_sigterm_drains_writes_the_recording_and_validate_predicts_it(recorded):
    srv, folder = recorded
    client = srv.client()
    chunks: list = []
    stream = client.completions.create(model=MODEL, prompt="A long road", max_tokens=40,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    reader = threading.Thread(target=lambda: chunks.extend(stream))
    reader.start()
    time.sleep(1.0)  # the request is in flight
    assert srv.stop(120) == 0, "".join(srv.stderr[-20:])
    reader.join(60)
    assert chunks and chunks[-1].choices[0].finish_reason == "length"  # it was let finish
    meta = json.loads((folder / "serve.json").read_text())
    assert meta["variant"] == "tiered-spec" and meta["num_completed"] >= 5
    trace = (folder / "trace.csv").read_text().splitlines()
    assert trace[0] == "arrival_s,prompt_tokens,output_tokens"
    assert len(trace) - 1 == meta["num_completed"]
    prompts = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    assert any(p["prompt"] == "A long road" for p in prompts)
    res = subprocess.run([sys.executable, "-m", "sim.cli", "validate", "--trace", str(folder),
                          "--cost-model", "roofline", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    run = doc["runs"][0]
    assert run["measured"]["num_completed"] == meta["num_completed"]
    assert run["predicted"]["num_completed"] == meta["num_completed"]
    assert run["relative_error"]["throughput_tok_s"] is not None
    assert "speculation.alpha" in run["conditioned_on"]  # measured acceptance, as validate


class open_metrics:
    def __init__(self, srv):
        self.url = srv.url + "/metrics"

    def __enter__(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=30) as r:
            return r.read().decode()

    def __exit__(self, *exc):
        return False


def _counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_a_policy_failure_fails_the_request_and_stops_the_server(scenario_file):
    """A tiering policy that raises mid-run: the request in flight gets a 500 naming the
    policy's exception, the server shuts itself down, the command exits 1."""
    import openai

    srv = start_server(scenario_file, "--variant", "baseline", "--set",
                       'policies.tiering={kind: "tests.plugin_policies:RaisingTiering", '
                       'after_step: 3}')
    try:
        with pytest.raises(openai.InternalServerError) as err:
            srv.client().completions.create(model=MODEL, prompt="Once", max_tokens=30,
                                            temperature=0, extra_body={"ignore_eos": True})
        assert "planted bug" in str(err.value) and "raising" in str(err.value)
        assert srv.proc.wait(60) == 1
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert any("infer-os: error: the engine stopped" in line for line in srv.stderr)


def test_serve_refuses_bad_input_before_loading(scenario_file):
    """One line naming the flag or field, exit 2, no traceback."""
    for args, needle in ((["--backend", "torch"], "--variant"),
                         (["--backend", "sim", "--variant", "baseline"], "--backend"),
                         (["--backend", "torch", "--variant", "baseline", "--port", "70000"],
                          "--port"),
                         (["--backend", "torch", "--variant", "baseline", "--record-text"],
                          "--record-text"),
                         (["--backend", "torch", "--variant", "nope"], "nope")):
        res = subprocess.run([sys.executable, "-m", "sim.cli", "serve", str(scenario_file),
                              *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and needle in res.stderr, (args, res.stderr)


def test_the_ort_backend_serves_too(scenario_file):
    """The same server over ONNX Runtime's executor: text in and out, streamed, sampled."""
    pytest.importorskip("onnxruntime")
    srv = start_server(scenario_file, "--variant", "baseline", "--backend", "ort")
    try:
        client = srv.client()
        out = client.completions.create(model=MODEL, prompt="The old house", max_tokens=8,
                                        temperature=0, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 8 and out.choices[0].text
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
            temperature=0.5, seed=1, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        assert srv.stop() == 0
