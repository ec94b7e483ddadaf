"""The hostile inputs issue 15 names, each an explicit case of the contract
(tests/fuzz/contract.py), in process; and a few through a real ``python -m sim.cli`` (the process
pool of a sweep, memory capped with ``RLIMIT_AS``, no ``Traceback`` on stderr)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import pytest
import yaml

from tests.fuzz.contract import case_dir, check, run_main, run_subprocess, write_files
from tests.fuzz.strategies import (
    BASE_SCENARIOS,
    HAND_SWEEP,
    PROFILES,
    alias_bomb,
    deep,
    dump,
    hf_config,
    set_path,
    small_scenario,
)


def scenario(base: dict | None = None, **dotted) -> str:
    """A small scenario (``base`` or quickstart's, clamped) with ``a__b=value`` set."""
    doc = copy.deepcopy(base or small_scenario())
    for key, value in dotted.items():
        set_path(doc, tuple(key.split("__")), value)
    return dump(doc)


PAPER = {**BASE_SCENARIOS["paper-ryzen-ai"], "variants": {"baseline": {}}}  # a shared bus
SPECULATING = {"model__draft": "smollm2-135m", "policies__speculation": {"kind": "fixed", "k": 4}}
QUICKSTART = BASE_SCENARIOS["quickstart"]


def profile(**figures) -> str:
    doc = copy.deepcopy(PROFILES["cpu-2core-avx512"])
    doc["devices"][0].update(figures.pop("device", {}))
    doc["memories"][0].update(figures.pop("memory", {}))
    return dump(doc)


def sweep(**fields) -> str:
    doc = copy.deepcopy(HAND_SWEEP)
    doc.update(fields)
    return dump(doc)


SIMULATE = ["simulate", "{root}/scenario.yaml", "--json"]
SWEEP = ["sweep", "{root}/sweep.yaml", "--json", "--out", "{root}/out", "--workers", "1"]
BASE = dump(small_scenario())


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]
    argv: list[str] = field(default_factory=lambda: list(SIMULATE))
    subprocess: bool = False


CASES = [
    Case("num_requests-1e9-yaml11-string",
         {"scenario.yaml": scenario().replace("num_requests: 4", "num_requests: 1e9")}),
    Case("num_requests-1e9", {"scenario.yaml": scenario(workload__num_requests=1e9)}),
    Case("num_requests-10**12", {"scenario.yaml": scenario(workload__num_requests=10**12)}),
    Case("max_draft_len-1e9",
         {"scenario.yaml": scenario(engine__max_draft_len=1e9, **SPECULATING)}),
    Case("prompt_tokens-fixed-1e20",
         {"scenario.yaml": scenario(workload__prompt_tokens={"kind": "fixed", "value": 1e20})}),
    Case("output_tokens-fixed-1e9",
         {"scenario.yaml": scenario(workload__output_tokens={"kind": "fixed", "value": 10**9})}),
    Case("seed--1", {"scenario.yaml": scenario(seed=-1)}),
    Case("seed-2**64", {"scenario.yaml": scenario(seed=2**64)}),
    Case("think_s-nan", {"scenario.yaml": scenario(workload__arrival__think_s=float("nan"))}),
    Case("think_s-inf", {"scenario.yaml": scenario(workload__arrival__think_s=float("inf"))}),
    Case("poisson-rate-inf", {"scenario.yaml": scenario(
        workload__arrival={"kind": "poisson", "rate_per_s": float("inf")})}),
    Case("poisson-rate-5e-324", {"scenario.yaml": scenario(
        workload__arrival={"kind": "poisson", "rate_per_s": 5e-324})}),
    Case("think_s-at-its-bound-on-a-shared-bus", {"scenario.yaml": scenario(
        PAPER, workload__arrival={"kind": "closed", "concurrency": 1, "think_s": 1e9})}),
    Case("poisson-rate-at-its-bound-on-a-shared-bus", {"scenario.yaml": scenario(
        PAPER, workload__arrival={"kind": "poisson", "rate_per_s": 1e-9})}),
    Case("kv_budget_bytes-inf", {"scenario.yaml": scenario(engine__kv_budget_bytes=float("inf"))}),
    Case("kv_budget_bytes-1e-300", {"scenario.yaml": scenario(engine__kv_budget_bytes=1e-300)}),
    Case("host_budget_bytes-inf",
         {"scenario.yaml": scenario(engine__host_budget_bytes=float("inf"))}),
    Case("lognormal-sigma-1e308", {"scenario.yaml": scenario(workload__prompt_tokens={
        "kind": "lognormal", "low": 1, "high": 64, "median": 1e308, "sigma": 1e308})}),
    Case("profile-peak_flops-1e-300", {"scenario.yaml": scenario(hardware="hw.yaml"),
                                       "hw.yaml": profile(device={"peak_flops_per_s": 1e-300})}),
    Case("profile-bandwidth-5e-324", {"scenario.yaml": scenario(hardware="hw.yaml"), "hw.yaml":
                                      profile(memory={"bandwidth_bytes_per_s": 5e-324})}),
    Case("profile-launch-overhead-inf", {"scenario.yaml": scenario(hardware="hw.yaml"), "hw.yaml":
                                         profile(device={"launch_overhead_s": float("inf")})}),
    Case("profile-capacity-inf", {"scenario.yaml": scenario(hardware="hw.yaml"),
                                  "hw.yaml": profile(memory={"capacity_bytes": float("inf")})}),
    Case("profile-non-utf8", {"scenario.yaml": scenario(hardware="hw.yaml"),
                              "hw.yaml": profile().encode() + b"\xff\xfe"}),
    Case("faults-the-only-device-fails", {"scenario.yaml": scenario(faults={"events": [
        {"kind": "device-failure", "device": "cpu", "start_s": 0}]})}),
    Case("faults-kv-shrink-to-nothing", {"scenario.yaml": scenario(faults={"events": [
        {"kind": "kv-shrink", "budget_frac": 1e-9, "start_s": 0.001}]})}),
    Case("faults-alloc-cap-1-byte", {"scenario.yaml": scenario(faults={"events": [
        {"kind": "alloc-cap", "cap_bytes": 1, "start_s": 0}]})}),
    Case("faults-step-error-every-first-step", {"scenario.yaml": scenario(faults={"events": [
        {"kind": "step-error", "at_step": 1}, {"kind": "step-error", "at_step": 2}]})}),
    Case("faults-unknown-device", {"scenario.yaml": scenario(faults={"events": [
        {"kind": "slow", "device": "npu", "factor": 2}]})}),
    Case("overload-max_waiting-0", {"scenario.yaml": scenario(
        workload__arrival={"kind": "poisson", "rate_per_s": 1e9}, engine__max_waiting=0)}),
    Case("newline-in-an-unknown-key", {"scenario.yaml": BASE + '"bogus\\nkey": 1\n'}),
    Case("newline-in-a-variant-name",
         {"scenario.yaml": BASE + 'variants: {"a\\nb": {seed: -1}}\n'}),
    Case("newline-in-a-set-key", {"scenario.yaml": BASE}, [*SIMULATE, "--set", "a\nb=1"]),
    Case("newline-in-a-policy-kind", {"scenario.yaml": scenario(policies__tiering={
        "kind": "fp16\nx"})}),
    Case("newline-in-a-sweep-axis", {"sweep.yaml": sweep(axes={"x\ny": 5}), "base.yaml": BASE},
         SWEEP),
    Case("cost_models-empty", {"scenario.yaml": scenario(cost_models=[])}),
    Case("set-variants.X-scalar", {"scenario.yaml": dump(QUICKSTART)},
         [*SIMULATE, "--set", "variants.int8-kv=5"]),
    Case("set-variants.X-bad-policy", {"scenario.yaml": dump(QUICKSTART)},
         [*SIMULATE, "--set", "variants.int8-kv={policies.tiering: {kind: nope}}"]),
    Case("set-variants.new-nan", {"scenario.yaml": dump(QUICKSTART)},
         [*SIMULATE, "--set", "variants.new={engine.max_batch: .nan}"]),
    Case("set-variants-list", {"scenario.yaml": dump(QUICKSTART)},
         [*SIMULATE, "--set", "variants=[1, 2]"]),
    Case("set-recursive-alias", {"scenario.yaml": BASE},
         [*SIMULATE, "--set", "policies.tiering=&a [*a]"]),
    Case("set-5000-digits", {"scenario.yaml": BASE}, [*SIMULATE, "--set", "seed=" + "9" * 5000]),
    Case("duplicate-top-level-key", {"scenario.yaml": BASE + "seed: 1\nseed: 2\n"}),
    Case("duplicate-nested-key",
         {"scenario.yaml": BASE.replace("engine:\n", "engine:\n  max_batch: 1\n", 1)}),
    Case("deep-nesting-lists", {"scenario.yaml": BASE + f"description: {deep(20_000)}\n"}),
    Case("deep-nesting-mappings", {"scenario.yaml": BASE + f"x: {deep(20_000, True)}\n"}),
    Case("deep-nesting-parsed", {"scenario.yaml": BASE + f"variants: {{v: {{x: {deep(900)}}}}}\n"}),
    Case("alias-bomb-in-policy-parameter", {"scenario.yaml": BASE + (
        "variants: {v: {policies.tiering: {kind: uniform, precision: "
        + alias_bomb() + "}}}\n")}),
    Case("non-utf8-scenario", {"scenario.yaml": BASE.encode() + b"# \xff\xfe\n"}),
    Case("utf16-scenario", {"scenario.yaml": BASE.encode("utf-16")}),
    Case("number-of-5000-digits",
         {"scenario.yaml": BASE.replace("seed: 0", "seed: " + "9" * 5000)}),
    Case("policy-os:system", {"scenario.yaml": scenario(policies__tiering={"kind": "os:system"})}),
    Case("policy-json:JSONDecoder",
         {"scenario.yaml": scenario(policies__buffers={"kind": "json:JSONDecoder"})}),
    Case("policy-broken-module",
         {"scenario.yaml": scenario(policies__buffers={"kind": "tests.plugin_broken:X"})}),
    Case("model-config-zero-heads", {"scenario.yaml": scenario(model__spec="model/config.json"),
                                     "model/config.json": json.dumps(
                                         {**hf_config("smollm2-135m"), "num_attention_heads": 0,
                                          "head_dim": None})}),
    Case("model-config-non-dividing-heads",
         {"scenario.yaml": scenario(model__spec="model/config.json"), "model/config.json":
          json.dumps({**hf_config("smollm2-135m"), "num_attention_heads": 7, "head_dim": None,
                      "num_key_value_heads": 5})}),
    Case("model-config-negative-sizes", {"scenario.yaml": scenario(model__spec="model/config.json"),
                                         "model/config.json": json.dumps(
                                             {**hf_config("gpt2"), "n_embd": -768})}),
    Case("model-config-strings", {"scenario.yaml": scenario(model__spec="model/config.json"),
                                  "model/config.json": json.dumps(
                                      {**hf_config("smollm2-135m"), "hidden_size": "576"})}),
    Case("model-config-list", {"scenario.yaml": scenario(model__spec="model/config.json"),
                               "model/config.json": "[1, 2]"}),
    Case("model-config-non-utf8", {"scenario.yaml": scenario(model__spec="model/config.json"),
                                   "model/config.json": b"\xff{}"}),
    Case("trace-huge-int", {"scenario.yaml": scenario(
        workload__arrival={"kind": "trace", "path": "trace.csv"}),
        "trace.csv": "arrival_s,prompt_tokens,output_tokens\n0,99999999999999999999,4\n"}),
    Case("trace-200kB-field", {"scenario.yaml": scenario(
        workload__arrival={"kind": "trace", "path": "trace.csv"}),
        "trace.csv": "arrival_s,prompt_tokens,output_tokens\n0," + "9" * 200_000 + ",4\n"}),
    Case("trace-non-utf8", {"scenario.yaml": scenario(
        workload__arrival={"kind": "trace", "path": "trace.csv"}),
        "trace.csv": b"arrival_s,prompt_tokens,output_tokens\n0,\xff,4\n"}),
    Case("acceptance-trace-non-utf8", {"scenario.yaml": scenario(
        speculation__acceptance_trace="acc.txt", **SPECULATING), "acc.txt": b"1 0 \xff"}),
    Case("quality-profile-nan", {"scenario.yaml": scenario(quality={"profile": "q.yaml"}),
                                 "q.yaml": "base_ppl: .nan\npenalties: {int8: .nan, int4: 0.1, "
                                           "int2: 1, missing: .inf}\n"}),
    Case("sweep-date-axis", {"sweep.yaml": sweep(axes={"seed": ["2024-01-01", "2024-01-02"]})
                             .replace("'", ""), "base.yaml": BASE}, SWEEP),
    Case("sweep-date-axis-description", {"sweep.yaml": sweep(
        axes={"description": [yaml.safe_load("2024-01-01")]}), "base.yaml": BASE}, SWEEP),
    Case("sweep-date-axis-sampled", {"sweep.yaml": sweep(
        axes={"seed": [yaml.safe_load("2024-01-01"), 1]}, samples=2), "base.yaml": BASE}, SWEEP),
    Case("sweep-samples-1e9", {"sweep.yaml": sweep(samples=10**9), "base.yaml": BASE}, SWEEP),
    Case("sweep-grid-1e9-values", {"sweep.yaml": sweep(
        axes={"engine.max_batch": {"low": 1, "high": 10**9, "step": 1}}), "base.yaml": BASE},
        SWEEP),
    Case("sweep-range-nan", {"sweep.yaml": sweep(
        axes={"engine.kv_budget_bytes": {"low": float("nan"), "high": float("nan"), "num": 2}}),
        "base.yaml": BASE}, SWEEP),
    Case("sweep-seed--1", {"sweep.yaml": sweep(seed=-1, samples=2), "base.yaml": BASE}, SWEEP),
    Case("sweep-alias-bomb-axis", {"sweep.yaml": "name: fz\nbase: base.yaml\naxes: "
                                   f"{{engine.max_batch: {alias_bomb()}}}\n",
                                   "base.yaml": BASE}, SWEEP),
    Case("sweep-alias-bomb-overrides", {"sweep.yaml": sweep().replace("seed: 0", "overrides: "
                                        f"{{description: {alias_bomb()}}}"), "base.yaml": BASE},
         SWEEP),
    Case("sweep-non-utf8", {"sweep.yaml": dump(HAND_SWEEP).encode() + b"\xff",
                            "base.yaml": BASE}, SWEEP),
    Case("sweep-base-is-itself", {"sweep.yaml": sweep(base="sweep.yaml"), "base.yaml": BASE},
         SWEEP),
]

SUBPROCESS_CASES = [
    Case("subprocess-num_requests-1e9", {"scenario.yaml": scenario(workload__num_requests=1e9)},
         subprocess=True),
    Case("subprocess-non-utf8", {"scenario.yaml": BASE.encode() + b"\xff"}, subprocess=True),
    Case("subprocess-deep-nesting", {"scenario.yaml": BASE + f"description: {deep(20_000)}\n"},
         subprocess=True),
    Case("subprocess-sweep-workers--1", {"sweep.yaml": sweep(), "base.yaml": BASE},
         ["sweep", "{root}/sweep.yaml", "--json", "--out", "{root}/out", "--workers", "-1"],
         subprocess=True),
    Case("subprocess-sweep-date-axis", {"sweep.yaml": sweep(axes={"seed": ["2024-01-01"]})
                                        .replace("'", ""), "base.yaml": BASE},
         ["sweep", "{root}/sweep.yaml", "--json", "--out", "{root}/out", "--workers", "1"],
         subprocess=True),
]


@pytest.mark.parametrize("case", CASES + SUBPROCESS_CASES, ids=lambda c: c.id)
def test_a_named_hostile_input_ends_in_exit_0_or_2(case):
    with case_dir() as root:
        write_files(root, case.files)
        argv = [a.replace("{root}", str(root)) for a in case.argv]
        outcome = run_subprocess(argv) if case.subprocess else run_main(argv)
        out = root / "out"
        check(outcome, files=case.files, json_out="--json" in argv,
              out_dir=out if out.is_dir() else None)
