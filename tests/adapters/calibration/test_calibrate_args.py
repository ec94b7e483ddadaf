"""``infer-os calibrate``'s numeric arguments and ``--out`` are checked before any work (exit 2, one
line naming the flag; ``--block-tokens 0`` used to loop for ever, ``--kv-quant-group 0`` to fail
after a minute), and Ctrl-C or SIGTERM ends a calibration with status 130 / 143, one line, and no
profile or temporary file left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.calibration.checks import write_profile
from sim.cli import main


@pytest.mark.parametrize(("args", "flag"), [
    (["--block-tokens", "0"], "--block-tokens"),
    (["--block-tokens", "4097"], "--block-tokens"),
    (["--block-tokens", "sixteen"], "--block-tokens"),
    (["--kv-quant-group", "0"], "--kv-quant-group"),
    (["--kv-quant-group", "7"], "--kv-quant-group"),
    (["--kv-quant-group", "8192"], "--kv-quant-group"),
    (["--threads", "0"], "--threads"),
    (["--threads", "1025"], "--threads"),
    (["--threads", "2.5"], "--threads"),
    (["--budget-s", "0"], "--budget-s"),
    (["--budget-s", "nan"], "--budget-s"),
    (["--budget-s", "inf"], "--budget-s"),
    (["--budget-s", "86401"], "--budget-s"),
    (["--backend", "tpu"], "--backend"),
])
def test_out_of_bounds_is_exit_2_naming_the_flag_before_any_work(tmp_path, capsys, args, flag):
    out = tmp_path / "p.yaml"
    # a model that does not exist: the flag is refused before the model is looked for
    code = main(["calibrate", "--backend", "torch", "--model", "no-such-model",
                 "--out", str(out), *args])
    assert code == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"infer-os: error: {flag}:"), err
    assert not out.exists()


def test_within_bounds_the_model_is_checked_next(tmp_path, capsys):
    assert main(["calibrate", "--backend", "torch", "--model", "no-such-model", "--threads", "1",
                 "--block-tokens", "4096", "--kv-quant-group", "8", "--budget-s", "0.1",
                 "--out", str(tmp_path / "p.yaml")]) == 2
    assert capsys.readouterr().err.startswith("infer-os: error: --model: unknown model")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_llama) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return write_llama(tmp_path_factory.mktemp("calib-args") / "model", layers=2)


def test_out_that_is_a_folder_is_refused_before_calibrating(tiny, tmp_path, capsys):
    assert main(["calibrate", "--backend", "torch", "--model", str(tiny), "--device", "cpu",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"infer-os: error: {tmp_path}: --out: is a folder")
    assert "calibrating" not in err


def test_the_profile_is_written_whole_and_nothing_else(tmp_path):
    path = tmp_path / "sub" / "p.yaml"
    write_profile(path, "a: 1\n")
    write_profile(path, "a: 2\n")
    assert path.read_text() == "a: 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["p.yaml"]


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------
def _default_sigint() -> None:
    """A shell that starts jobs in the background ignores SIGINT in them; Python then never turns
    it into KeyboardInterrupt.  The child gets the default, as a terminal's program does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_calibrate_with_one_line_and_no_profile(tiny, tmp_path, sig, status):
    out = tmp_path / "profiles" / "p.yaml"
    cmd = [str(Path(sys.executable).parent / "infer-os"), "calibrate", "--backend", "torch",
           "--model", str(tiny), "--device", "cpu", "--threads", "1", "--block-tokens", "16",
           "--kv-quant-group", "16", "--budget-s", "120", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    first = proc.stderr.readline()  # printed once the arguments passed, before the work
    assert first.startswith("calibrating the torch backend"), first
    time.sleep(1.0)
    proc.send_signal(sig)
    try:
        stdout, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still calibrating 60 s after signal {sig}")
    assert proc.returncode == status, err
    assert stdout == "" and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["infer-os: interrupted"]
    assert list(out.parent.iterdir()) == []  # no profile, no temporary file
