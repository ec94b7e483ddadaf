"""The fuzz suite's tally: cases tried per test and every distinct contract violation, printed in
the terminal summary (and written as JSON to ``$INFER_OS_FUZZ_REPORT`` when set)."""

from __future__ import annotations

import json
import os

from tests.fuzz.contract import SURVEY, TALLY


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
