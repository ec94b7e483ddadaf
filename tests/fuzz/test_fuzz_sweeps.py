"""Fuzzing ``sweep`` with hostile sweep files (axes, ranges, sizes, seeds, bases) and damaged
results folders it resumes (tests/fuzz/contract.py).  The points run in this process, one after
the other, with the local pool's semantics (``contract._serial_points``); the pool itself is
started by the subprocess cases of test_fuzz_regressions.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import case_dir, check, checked_run, fuzz_settings, run_main
from tests.fuzz.strategies import (
    BAD_BYTES,
    HAND_SWEEP,
    dump,
    hostile_values,
    small_scenario,
    sweep_files,
)


def _sweep(root):
    return ["sweep", str(root / "sweep.yaml"), "--json", "--out", str(root / "out"),
            "--workers", "1"]


@fuzz_settings(80)
@given(sweep_files())
def test_any_sweep_file_ends_in_exit_0_or_2(case):
    sweep, base = case
    with case_dir() as root:
        (root / "sub").mkdir()
        checked_run(root, {"sweep.yaml": sweep, "base.yaml": base}, _sweep, out_dir=root / "out")


RESULT_FILES = ["points.jsonl", "sweep.json", "results.csv"]


@st.composite
def damage(draw) -> tuple[str, bytes, bool]:
    """(a results file, what to write there, append rather than replace)."""
    name = draw(st.sampled_from(RESULT_FILES))
    content = draw(st.one_of(
        st.sampled_from([b"", b"{", b"not json\n", b'{"point_id": 5}\n', b"[]\n", b"null\n",
                         b'{"point_id": "x", "status": "ok", "metrics": {"a": NaN}}\n',
                         b'{"point_id": "x"}\n', b"\x00\x00\n", *BAD_BYTES]),
        hostile_values().map(lambda v: (dump(v) if not isinstance(v, float) else repr(v))
                             .encode())))
    return name, content, draw(st.booleans())


@fuzz_settings(20)
@given(damage())
def test_a_rerun_into_a_damaged_results_folder_ends_in_exit_0_or_2(hurt):
    name, content, append = hurt
    files = {"sweep.yaml": dump(HAND_SWEEP), "base.yaml": dump(small_scenario())}
    with case_dir() as root:
        out = root / "out"
        first, problems = checked_run(root, files, _sweep, out_dir=out)
        if first.status != 0 or problems:
            return
        path = out / name
        path.write_bytes((path.read_bytes() if append and path.exists() else b"") + content)
        files[f"out/{name}"] = content
        check(run_main(_sweep(root)), files=files, json_out=True)
