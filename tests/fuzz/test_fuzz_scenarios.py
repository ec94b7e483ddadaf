"""Fuzzing ``simulate`` with hostile scenario files, ``--set`` options and ``faults:`` blocks
(tests/fuzz/contract.py says what every case must do)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import case_dir, check, checked_run, fuzz_settings, run_main
from tests.fuzz.strategies import (
    base_scenarios,
    dump,
    extreme_scenarios,
    faults_documents,
    scenario_files,
    set_options,
)


def _simulate(*extra: str):
    return lambda root: ["simulate", str(root / "scenario.yaml"), "--json", *extra]


@fuzz_settings(160)
@given(scenario_files())
def test_any_scenario_file_ends_in_exit_0_or_2(data):
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": data}, _simulate())


@fuzz_settings(40)
@given(scenario_files())
def test_any_scenario_with_out_writes_finite_files_that_report_draws(data):
    with case_dir() as root:
        out = root / "out"
        outcome, problems = checked_run(root, {"scenario.yaml": data},
                                        _simulate("--out", str(out)), out_dir=out)
        if outcome.status == 0 and not problems:
            check(run_main(["report", str(out)]), files={"scenario.yaml": data})


@fuzz_settings(80)
@given(base_scenarios(), st.data())
def test_any_set_option_ends_in_exit_0_or_2(doc, data):
    options = data.draw(set_options(doc))
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(doc)}, _simulate(*options))


@fuzz_settings(80)
@given(faults_documents())
def test_any_faults_block_or_overload_ends_in_exit_0_or_2(doc):
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(doc)}, _simulate())


@fuzz_settings(80)
@given(extreme_scenarios())
def test_valid_but_extreme_settings_end_in_exit_0_or_2(doc):
    with case_dir() as root:
        checked_run(root, {"scenario.yaml": dump(doc)}, _simulate())
