"""``infer-os serve`` driven by the official ``openai`` client: completions and chat, streaming
and not, greedy output equal to ``infer-os generate``, concurrency, a full queue (503), bad
input in OpenAI's error shape, and ``/metrics`` counting exactly the requests sent.

One server for the module (tests run in file order and count what they sent in ``SENT``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.adapters.serving.conftest import MODEL, start_server

SENT = {"completed": 0}  # requests this module completed through the server


@pytest.fixture(scope="module")
def server(scenario_file):
    srv = start_server(scenario_file, "--variant", "baseline", "--max-waiting", "1")
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr[-20:])


def _post(url: str, body: bytes, content_type: str = "application/json"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_greedy_completion_equals_generate(server, scenario_file):
    prompt = "The old house at the end of the lane"
    out = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                             temperature=0)
    SENT["completed"] += 1
    ref = subprocess.run([sys.executable, "-m", "sim.cli", "generate", "--model", MODEL,
                          "--prompt", prompt, "--max-new-tokens", "12", "--device", "cpu",
                          "--json"], capture_output=True, text=True, timeout=300, check=True)
    expected = json.loads(ref.stdout)
    assert out.choices[0].text == expected["text"]
    assert out.usage.completion_tokens == len(expected["token_ids"])
    assert out.usage.prompt_tokens == expected["prompt_tokens"]
    assert out.choices[0].finish_reason == ("length" if expected["finish_reason"] == "length"
                                            else "stop")


def test_streaming_equals_non_streaming(server):
    client = server.client()
    kw = dict(model=MODEL, prompt="To be, or not to be", max_tokens=10, temperature=0)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))
    SENT["completed"] += 2
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_streaming_and_not(server):
    client = server.client()
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                           temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                            temperature=0, stream=True)
    SENT["completed"] += 2
    parts = [c.choices[0].delta for c in stream if c.choices]
    assert parts[0].role == "assistant"
    assert "".join(p.content or "" for p in parts) == whole.choices[0].message.content
    assert whole.choices[0].message.content  # the chat template made a real answer
    assert whole.usage.prompt_tokens > 10  # the template's system prompt is in it


def test_stop_strings_and_seeded_sampling(server):
    client = server.client()
    out = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=24,
                                    temperature=0, stop=[","])
    assert "," not in out.choices[0].text and out.choices[0].finish_reason == "stop"
    kw = dict(model=MODEL, prompt="In the beginning", max_tokens=16, temperature=0.9)
    a = client.completions.create(**kw, seed=7).choices[0].text
    b = client.completions.create(**kw, seed=7).choices[0].text
    others = {client.completions.create(**kw, seed=s).choices[0].text for s in (1, 2, 3)}
    SENT["completed"] += 6
    assert a == b  # a request's seed fixes its sample
    assert len(others | {a}) > 1  # and different seeds sample differently


def test_concurrent_requests_all_complete(server):
    client = server.client()
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = client.completions.create(model=MODEL, prompt=f"Story {i}:",
                                               max_tokens=6 + i, temperature=0,
                                               extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    SENT["completed"] += 3
    assert sorted(results) == [0, 1, 2]
    assert [results[i].usage.completion_tokens for i in range(3)] == [6, 7, 8]


def test_a_full_queue_is_a_503_with_retry_after(server):
    """A burst of 8 over a batch of 2 and a waiting room of 1: some are refused, none lost."""
    body = json.dumps({"model": MODEL, "prompt": "Again and again", "max_tokens": 24,
                       "temperature": 0, "ignore_eos": True}).encode()
    codes: list[tuple[int, dict, dict]] = []
    threads = [threading.Thread(target=lambda: codes.append(
        _post(server.url + "/v1/completions", body))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(codes) == 8
    ok = [c for c in codes if c[0] == 200]
    busy = [c for c in codes if c[0] == 503]
    assert len(ok) + len(busy) == 8 and len(busy) >= 1 and len(ok) >= 2
    assert all(h.get("retry-after") == "1" for _, h, _ in busy)
    assert all(b["error"]["type"] == "server_overloaded" for _, _, b in busy)
    assert all(b["usage"]["completion_tokens"] == 24 for _, _, b in ok)
    SENT["completed"] += len(ok)
    SENT["refused"] = len(busy)


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "model"),
    (json.dumps({"model": MODEL, "prompt": list(range(9000))}).encode(), 413, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 10**6}).encode(), 400,
     "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "x", "n": 2}).encode(), 400, "n"),
    (json.dumps({"model": MODEL, "prompt": "x", "temperature": -1}).encode(), 400,
     "temperature"),
    (json.dumps({"model": MODEL}).encode(), 400, "prompt"),
])
def test_bad_input_gets_openai_errors(server, body, status, param):
    code, _, doc = _post(server.url + "/v1/completions", body)
    assert code == status
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["param"] == param and doc["error"]["message"]


def test_openai_client_raises_the_matching_errors(server):
    import openai

    client = server.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)


def test_metrics_count_the_requests_sent(server):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def total(name, **labels):
        return sum(s.value for s in families[name].samples
                   if s.name.endswith("_total") and all(s.labels.get(k) == v
                                                        for k, v in labels.items()))

    assert total("infer_os:request_success") == SENT["completed"]
    assert total("infer_os:request_failure", status="503") == SENT["refused"]
    ttft = families["infer_os:time_to_first_token_seconds"]
    count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
    assert count == SENT["completed"]
    for name in ("infer_os:num_requests_running", "infer_os:num_requests_waiting",
                 "infer_os:kv_cache_bytes", "infer_os:kv_cache_saved_frac",
                 "infer_os:device_busy_frac", "infer_os:buffer_allocations",
                 "infer_os:spec_decode_num_draft_tokens", "infer_os:e2e_request_latency_seconds",
                 "infer_os:time_per_output_token_seconds", "infer_os:generation_tokens"):
        assert name in families, name
    assert total("infer_os:generation_tokens") >= SENT["completed"]
