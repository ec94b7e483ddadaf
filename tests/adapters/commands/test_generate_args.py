"""``infer-os generate``'s numeric arguments are bounded and checked before any model is loaded
(exit 2, one line naming the flag), and Ctrl-C or SIGTERM ends a generation with status 130 / 143
and one line, no traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.cli import main


@pytest.mark.parametrize(("args", "flag"), [
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--max-new-tokens", "1048577"], "--max-new-tokens"),
    (["--max-new-tokens", "many"], "--max-new-tokens"),
    (["--max-new-tokens", "2.5"], "--max-new-tokens"),
    (["--prompt-ids", "1,2147483648"], "--prompt-ids"),
    (["--prompt-ids=-1,2"], "--prompt-ids"),
    (["--prompt-ids", ","], "--prompt-ids"),
    (["--set", "temperature=1e-9"], "--set temperature"),
    (["--set", "temperature=inf"], "--set temperature"),
    (["--set", "temperature=nan"], "--set temperature"),
    (["--set", "temperature=101"], "--set temperature"),
    (["--set", "top_k=-1"], "--set top_k"),
    (["--set", "seed=-1"], "--set seed"),
    (["--set", f"seed={2**64}"], "--set seed"),
])
def test_out_of_bounds_is_exit_2_naming_the_flag_before_loading(capsys, args, flag):
    prompt = [] if any(a.startswith("--prompt-ids") for a in args) else ["--prompt-ids", "1,2"]
    # a model that does not exist: the flag is refused before the model is looked for
    assert main(["generate", "--model", "no-such-model", *prompt, *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"infer-os: error: {flag}:"), err
    assert "loading" not in err and "no-such-model" not in err


def test_the_bounds_themselves_are_accepted(capsys):
    # within bounds, the same command gets as far as the model (unknown here)
    assert main(["generate", "--model", "no-such-model", "--prompt-ids", "0,2147483647",
                 "--max-new-tokens", "1048576", "--set", "temperature=0.001", "top_k=0",
                 f"seed={2**63 - 1}"]) == 2
    assert "--model: unknown model 'no-such-model'" in capsys.readouterr().err


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------
def _default_sigint() -> None:
    """A shell that starts jobs in the background ignores SIGINT in them; Python then never turns
    it into KeyboardInterrupt.  The child gets the default, as a terminal's program does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_and_stop(cmd: list[str], marker: str, sig: int, delay_s: float):
    """Start ``cmd``, wait for ``marker`` on its stderr, ``delay_s`` more, send ``sig``; its
    (status, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    seen = []
    while True:
        line = proc.stderr.readline()
        seen.append(line)
        if not line or marker in line:
            break
    time.sleep(delay_s)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running 60 s after signal {sig}")
    return proc.returncode, out, "".join(seen) + err


@pytest.fixture(scope="module")
def long_model(tmp_path_factory, write_llama) -> Path:
    """The tiny Llama with room for 100,000 positions: a generation that lasts."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path = write_llama(tmp_path_factory.mktemp("long") / "model", layers=2)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 100_100}))
    return path


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_generate_with_one_line(long_model, sig, status):
    cmd = [str(Path(sys.executable).parent / "infer-os"), "generate", "--model",
           str(long_model), "--prompt-ids", "1,2,3", "--max-new-tokens", "100000",
           "--set", "ignore_eos=true"]
    code, out, err = run_and_stop(cmd, "loading", sig, 1.0)
    assert code == status, err
    assert out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == "infer-os: interrupted"
    assert [ln for ln in err.splitlines() if ln.startswith("infer-os:")] == \
        ["infer-os: interrupted"]
