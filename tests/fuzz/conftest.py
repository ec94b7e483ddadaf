"""The fuzz suite's tally: cases tried per test and every distinct contract violation, printed in
the terminal summary (and written as JSON to ``$INFER_OS_FUZZ_REPORT`` when set)."""

from __future__ import annotations

import gc
import json
import os

import pytest

from tests.fuzz.contract import SURVEY, TALLY


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """Every fuzz case ends in ``gc.collect()`` (so one case's garbage does not count against the
    next one's address-space cap); behind the rest of the suite's heap (torch, transformers, the
    models module fixtures kept) each collection took about 0.2 s, and a fuzz test ran 4-9x
    slower in the full suite than alone. Freezing what is alive before the module moves it out
    of the collector's sight (``gc.freeze``): the cases' own garbage is still collected."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLY.cases:
        return
    tally = TALLY.as_json()
    write = terminalreporter.write_line
    terminalreporter.section("infer-os fuzz")
    write(f"{tally['total_cases']} cases tried ({tally['commands']} commands run), "
          f"{tally['failed_cases']} broke the contract"
          + (" (survey: recorded, not failed)" if SURVEY else ""))
    for test, n in sorted(tally["cases"].items()):
        outcomes = ", ".join(f"{k}: {v}" for k, v in tally["outcomes"].get(test, {}).items())
        write(f"  {n:5d}  {test} ({outcomes})")
    write(f"slowest command: {tally['slowest_s']:.2f} s ({tally['slowest']})")
    if tally["groups"]:
        write(f"{len(tally['groups'])} distinct violations (count, signature):")
        for signature, group in tally["groups"].items():
            write(f"  {group['count']:5d}  {signature}")
    path = os.environ.get("INFER_OS_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(tally, f, indent=2)
        write(f"tally written to {path}")
