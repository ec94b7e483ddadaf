"""Fuzzing ``report`` with damaged ``--out`` folders: results.json, the Chrome traces and the
CSVs that ``simulate --out`` wrote, each replaced or cut (tests/fuzz/contract.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import case_dir, check, checked_run, fuzz_settings, run_main
from tests.fuzz.strategies import BAD_BYTES, dump, hostile_values, small_scenario

SCENARIO = small_scenario()
SCENARIO["variants"] = {"a": {}, "b": {"policies.tiering": {"kind": "uniform",
                                                            "precision": "int8"}}}


@st.composite
def damage(draw) -> tuple[int, str, object]:
    """(which file of the folder, how to damage it, the value for ``replace``)."""
    return (draw(st.integers(0, 99)), draw(st.sampled_from(["cut", "replace", "bytes", "json",
                                                            "delete"])),
            draw(hostile_values()))


def _hurt(path, how: str, value, draw_bytes: bytes) -> bytes | None:
    data = path.read_bytes()
    if how == "cut":
        new = data[:len(data) // 2]
    elif how == "bytes":
        new = data[:len(data) // 3] + draw_bytes + data[len(data) // 3:]
    elif how == "json":
        new = json.dumps(value, default=str).encode()
    elif how == "delete":
        path.unlink()
        return None
    else:
        new = dump(value).encode()
    path.write_bytes(new)
    return new


@fuzz_settings(30)
@given(damage(), st.sampled_from(BAD_BYTES))
def test_report_of_a_damaged_out_folder_ends_in_exit_0_or_2(hurt, bad):
    index, how, value = hurt
    with case_dir() as root:
        out = root / "out"
        first, problems = checked_run(
            root, {"scenario.yaml": dump(SCENARIO)},
            lambda r: ["simulate", str(r / "scenario.yaml"), "--out", str(out)], json_out=False)
        if first.status != 0 or problems:
            return
        files = sorted(p for p in out.iterdir() if p.is_file())
        target = files[index % len(files)]
        new = _hurt(target, how, value, bad)
        shown = {f"out/{target.name}": b"(deleted)" if new is None else new}
        check(run_main(["report", str(out)]), files=shown)
