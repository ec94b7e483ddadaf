"""Fuzzing the command line with hostile input files (issue 15): every input ends in exit 0 with
finite metrics or exit 2 with one ``infer-os: error: FILE: FIELD: message`` line per error, within a
time and memory bound, never a traceback (tests/fuzz/contract.py)."""
