"""Fixtures shared by the engine's trace tests: a scenario on a made-up power-of-two hardware
profile and a tiny model (``toy_scenario``), a run of it under the ``coefficient`` cost model with
the trace recorded (``toy_run``), and two views of a run (``toy_steps``, ``toy_timeline``).

The rates make every step time a power of two in seconds (exact in binary floating point):

    decode step  = 1 token / 8 tok/s          = 0.125 s    (whatever the batch size)
    prefill step = prompt tokens / 1024 tok/s  (128 tokens = 0.125 s, 64 = 0.0625, 32 = 0.03125)

The tiny model (a Hugging Face style config.json) has 2 layers, 2 KV heads and a head dim of 16,
so K+V = 256 bytes per token at FP16 and a 16-token block is 4096 bytes.

Each fixture is session-scoped and returns a function, so Hypothesis ``@given`` tests may use it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sim.config.scenario import resolve_runs
from sim.run.runner import RunOutput, run_scenario

_CITED = "[A] made-up figure for a test"


def write_profile(path: Path) -> Path:
    """Two devices (cpu, gpu) on one memory bus; every figure cited, as the schema demands."""
    device_figures = {"peak_flops_per_s": 1.0e12, "compute_efficiency": 1.0,
                      "launch_overhead_s": 0.0, "command_latency_s": 0.0,
                      "alloc_latency_s": 0.0, "alloc_bytes_per_s": 1.0e9}
    memory_figures = {"capacity_bytes": 1.0e12, "bandwidth_bytes_per_s": 1.0e11,
                      "efficiency": 1.0}
    profile = {
        "name": "toy",
        "description": "round numbers for hand-computed tests",
        "host_memory": "dram",
        "memories": [{"name": "dram", **memory_figures,
                      "sources": {k: _CITED for k in memory_figures}}],
        "devices": [{"name": name, "kind": kind, "memory": "dram", **device_figures,
                     "sources": {k: _CITED for k in device_figures}}
                    for name, kind in (("cpu", "cpu"), ("gpu", "gpu"))],
    }
    path.write_text(yaml.safe_dump(profile))
    return path


def write_tiny_model(directory: Path, max_context: int = 512) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "intermediate_size": 128, "vocab_size": 256,
              "max_position_embeddings": max_context}
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def write_scenario(directory: Path, *, rows=None, arrival=None, engine=None,
                   scheduling=None, num_requests: int = 1, prompt: int = 32, output: int = 4,
                   max_context: int = 512) -> Path:
    """A scenario YAML in ``directory``; ``rows`` = (arrival_s, prompt, output) of a trace file."""
    hw = write_profile(directory / "toy-profile.yaml")
    model = write_tiny_model(directory / "tiny", max_context)
    workload: dict = {"num_requests": num_requests,
                      "prompt_tokens": {"kind": "fixed", "value": prompt},
                      "output_tokens": {"kind": "fixed", "value": output}}
    if rows is not None:
        with (directory / "trace.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["arrival_s", "prompt_tokens", "output_tokens"])
            w.writerows(rows)
        workload["arrival"] = {"kind": "trace", "path": "trace.csv"}
    else:
        workload["arrival"] = arrival or {"kind": "closed", "concurrency": 1}
    scenario = {
        "name": "engine-test",
        "seed": 0,
        "model": {"spec": str(model)},
        "hardware": str(hw),
        "cost_models": ["coefficient"],
        "coefficient": {"baseline_decode_tok_s": {"value": 8, "source": _CITED},
                        "baseline_prefill_tok_s": {"value": 1024, "source": _CITED},
                        "techniques": {}},
        "workload": workload,
        "engine": {"block_tokens": 16, **(engine or {})},
        "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "exact"},
                     "speculation": {"kind": "off"},
                     "scheduling": scheduling or {"kind": "single", "device": "cpu"}},
    }
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def run(path: Path, sets: list[str] | None = None) -> RunOutput:
    ((variant, scn),) = resolve_runs(path, sets or [])
    return run_scenario(scn, variant, "coefficient", path.parent, record_trace=True)


def steps(out: RunOutput) -> list[tuple[str, str, float, float, tuple[int, ...]]]:
    """The trace as (device, op, start_s, end_s, request ids), in start order."""
    return sorted(((dev, op, t, t + s, ids) for dev, op, t, s, ids in out.state.trace),
                  key=lambda e: (e[2], e[0]))


def timeline(out: RunOutput) -> list[tuple[float, float, float, float]]:
    s = out.state
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in
            zip(s.arrival_s, s.admitted_s, s.first_token_s, s.finish_s)]


@pytest.fixture(scope="session")
def toy_scenario() -> Callable[..., Path]:
    """``toy_scenario(directory, *, rows=None, arrival=None, engine=None, scheduling=None,
    num_requests=1, prompt=32, output=4, max_context=512) -> directory / "scenario.yaml"``."""
    return write_scenario


@pytest.fixture(scope="session")
def toy_run() -> Callable[..., RunOutput]:
    """``toy_run(path, sets=None)``: the scenario's one run, coefficient model, trace recorded."""
    return run


@pytest.fixture(scope="session")
def toy_steps() -> Callable[[RunOutput], list]:
    """``toy_steps(out)``: the trace as (device, op, start_s, end_s, request ids), by start."""
    return steps


@pytest.fixture(scope="session")
def toy_timeline() -> Callable[[RunOutput], list]:
    """``toy_timeline(out)``: per request (arrival_s, admitted_s, first_token_s, finish_s)."""
    return timeline
