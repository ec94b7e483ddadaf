"""Fuzzing the files a scenario names: hardware profiles, quality profiles, Hugging Face
``config.json`` model specs, workload traces and acceptance traces (tests/fuzz/contract.py)."""

from __future__ import annotations

from hypothesis import given

from tests.fuzz.contract import case_dir, checked_run, fuzz_settings
from tests.fuzz.strategies import (
    acceptance_cases,
    dump,
    hardware_cases,
    model_cases,
    quality_cases,
    trace_cases,
)


def _simulate(root):
    return ["simulate", str(root / "scenario.yaml"), "--json"]


@fuzz_settings(80)
@given(hardware_cases())
def test_any_hardware_profile_ends_in_exit_0_or_2(case):
    scenario, profile = case
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(scenario), "hw.yaml": profile}, _simulate)


@fuzz_settings(50)
@given(quality_cases())
def test_any_quality_profile_ends_in_exit_0_or_2(case):
    scenario, profile = case
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(scenario), "q.yaml": profile}, _simulate)


@fuzz_settings(80)
@given(model_cases())
def test_any_model_config_json_ends_in_exit_0_or_2(case):
    scenario, config = case
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(scenario), "model/config.json": config},
                    _simulate)


@fuzz_settings(80)
@given(trace_cases())
def test_any_workload_trace_ends_in_exit_0_or_2(case):
    scenario, trace = case
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(scenario), "trace.csv": trace}, _simulate)


@fuzz_settings(40)
@given(acceptance_cases())
def test_any_acceptance_trace_ends_in_exit_0_or_2(case):
    scenario, trace = case
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(scenario), "acc.txt": trace}, _simulate)
