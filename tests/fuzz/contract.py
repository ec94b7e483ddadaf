"""The contract every fuzz case checks (issue 15), and the tally the summary prints.

Every input ends in

- exit 0 with finite metrics (``--json``: stdout is exactly one JSON object, no NaN/Infinity, every
  number finite; a ``simulate`` reports at least one run; files an ``--out`` folder holds are
  finite too), or
- exit 2 with one line per error on stderr, each ``infer-os: error: FILE: FIELD: message`` naming
  the file (a path; or, for an error in the command line itself, the ``--option``), or
- exit 1 only for a policy failure (``... ended early: ...``), exit 3 never here (no command of
  these cases needs a backend);

within ``TIME_LIMIT_S`` seconds of CPU time (SIGPROF; ``WALL_FACTOR`` times that of wall time,
SIGALRM) and ``MEMORY_HEADROOM`` bytes of address space more than the test process had
(``RLIMIT_AS``, so a run that would allocate gigabytes fails fast instead of taking the shared
machine down), and never with a traceback: no exception escapes ``sim.cli.main`` in process, no
``Traceback`` on stderr in a subprocess.

``INFER_OS_FUZZ_SURVEY=1`` records violations without failing (to see every distinct one in one
run); ``INFER_OS_FUZZ_REPORT=FILE`` writes the tally as JSON.  ``INFER_OS_FUZZ_TIME_S`` and
``INFER_OS_FUZZ_MEM_MB`` change the bounds; ``INFER_OS_FUZZ_SCALE`` multiplies the number of
Hypothesis examples (``fuzz_settings``).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
TIME_LIMIT_S = float(os.environ.get("INFER_OS_FUZZ_TIME_S", "10"))  # of CPU time
WALL_FACTOR = 3  # the wall-clock bound is this many times the CPU-time one
MEMORY_HEADROOM = int(os.environ.get("INFER_OS_FUZZ_MEM_MB", "2048")) << 20
SUBPROCESS_MEMORY = 4 << 30  # a whole fresh interpreter, its sweep workers each on their own
SURVEY = os.environ.get("INFER_OS_FUZZ_SURVEY") == "1"
ERROR_PREFIX = "infer-os: error: "


class FuzzTimeout(BaseException):
    """The time bound ran out (a BaseException, so no ``except Exception`` swallows it)."""


@dataclass
class Outcome:
    """What one command did."""

    argv: list[str]
    status: int | None
    stdout: str
    stderr: str
    error: BaseException | None = None  # what escaped main (in process)
    where: str = ""  # where it escaped from, or where the time ran out
    wall_s: float = 0.0
    subprocess: bool = False


@dataclass
class Group:
    count: int = 0
    tests: set[str] = field(default_factory=set)
    sample: str = ""


@dataclass
class Tally:
    """Cases tried per test and every distinct violation (by signature) with one sample."""

    cases: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    slowest: tuple[float, str] = (0.0, "")
    groups: dict[str, Group] = field(default_factory=dict)
    failed_cases: int = 0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # test -> outcome -> n

    def case(self, test: str) -> None:
        self.cases[test] = self.cases.get(test, 0) + 1

    def record(self, test: str, outcome: Outcome, problems: list[tuple[str, str]],
               case: str) -> None:
        self.commands += 1
        label = ("hang" if isinstance(outcome.error, FuzzTimeout) else "raised"
                 if outcome.error is not None else f"exit {outcome.status}")
        per_test = self.statuses.setdefault(test, {})
        per_test[label] = per_test.get(label, 0) + 1
        if outcome.wall_s > self.slowest[0]:
            self.slowest = (outcome.wall_s, f"{test}: {' '.join(outcome.argv[:2])}")
        if problems:
            self.failed_cases += 1
        for signature, detail in problems:
            group = self.groups.setdefault(signature, Group())
            group.count += 1
            group.tests.add(test)
            if not group.sample:
                group.sample = f"{detail}\n{case}"[:8000]

    def as_json(self) -> dict:
        return {"cases": self.cases, "total_cases": sum(self.cases.values()),
                "outcomes": {t: dict(sorted(c.items())) for t, c in self.statuses.items()},
                "commands": self.commands, "failed_cases": self.failed_cases,
                "slowest_s": round(self.slowest[0], 3), "slowest": self.slowest[1],
                "groups": {s: {"count": g.count, "tests": sorted(g.tests), "sample": g.sample}
                           for s, g in sorted(self.groups.items(), key=lambda x: -x[1].count)}}


TALLY = Tally()


def current_test() -> str:
    """The running test's name, parametrization stripped (``PYTEST_CURRENT_TEST``)."""
    name = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    return name.split("::")[-1].split("[")[0]


# -- running a command -------------------------------------------------------------------------
def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _on_alarm(signum, frame):
    clock = "of CPU time" if signum == signal.SIGPROF else "of wall time"
    limit = TIME_LIMIT_S * (1 if signum == signal.SIGPROF else WALL_FACTOR)
    raise FuzzTimeout(f"no answer within {limit:g} s {clock}")


def _serial_points(points, fn, spec):
    """The local process pool's semantics in this process (an exception of a point is the
    executor's error, so the point is lost), without starting a pool for every example."""
    for point in points:
        try:
            yield point, fn(point)
        except Exception as err:  # noqa: BLE001 - the pool hands these back the same way
            yield point, err


@contextlib.contextmanager
def _bounded() -> Iterator[None]:
    """``FuzzTimeout`` after ``TIME_LIMIT_S`` of CPU time (SIGPROF: a machine shared with
    others' builds does not make a fast case look hung) or ``WALL_FACTOR`` times that of wall
    time (SIGALRM: a case that waits instead of computing); address space capped at the current
    size + headroom."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    old = {sig: signal.signal(sig, _on_alarm) for sig in (signal.SIGPROF, signal.SIGALRM)}
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT_S)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S * WALL_FACTOR)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _is_product(filename: str) -> bool:
    path = Path(filename)
    return (path.is_relative_to(REPO) and not path.is_relative_to(REPO / ".venv")
            and not path.is_relative_to(REPO / "tests"))


def _short(filename: str) -> str:
    path = Path(filename)
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    parts = path.parts
    return "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts
                    else parts[-2:])


def where(exc: BaseException) -> tuple[str, str]:
    """(stable, detailed) location of an exception: the innermost product frame (file and
    function; with the line number in the detailed one) and the innermost frame of all."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    product = [f for f in frames if _is_product(f.filename)]
    stable, detail = [], []
    if product:
        f = product[-1]
        stable.append(f"{_short(f.filename)} {f.name}")
        detail.append(f"{_short(f.filename)}:{f.lineno} {f.name}")
    if frames and (not product or frames[-1] is not product[-1]):
        f = frames[-1]
        stable.append(f"via {_short(f.filename)} {f.name}")
        detail.append(f"via {_short(f.filename)}:{f.lineno} {f.name}")
    return ", ".join(stable), ", ".join(detail)


def run_main(argv: Sequence[str]) -> Outcome:
    """``sim.cli.main(argv)`` in this process within the bounds, stdout and stderr captured;
    sweeps run their points here, one after the other (``_serial_points``)."""
    from sim.cli import main
    from sim.sweep import run as sweep_run

    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    outcome = Outcome(argv, None, "", "")
    t0 = time.perf_counter()
    try:
        with (_bounded(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err),
              mock.patch.dict(sweep_run.EXECUTORS, {"local": _serial_points})):
            outcome.status = main(argv)
    except KeyboardInterrupt:
        raise
    except SystemExit as e:  # argparse
        outcome.status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - the contract: nothing escapes main
        outcome.error = e
        outcome.where = where(e)[1]
    outcome.wall_s = time.perf_counter() - t0
    outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()
    gc.collect()
    return outcome


def run_subprocess(argv: Sequence[str], timeout_s: float | None = None) -> Outcome:
    """``python -m sim.cli ARGV`` in a fresh process (address space capped at
    ``SUBPROCESS_MEMORY``), killed with its whole process group after the wall-clock bound
    (``WALL_FACTOR`` x ``TIME_LIMIT_S``: room for the interpreter's start-up)."""
    argv = [str(a) for a in argv]
    timeout_s = timeout_s or TIME_LIMIT_S * WALL_FACTOR

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_MEMORY, SUBPROCESS_MEMORY))

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limit, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        status: int | None = proc.returncode
        error = None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this call started
        out, err = proc.communicate()
        status, error = None, FuzzTimeout(f"no exit within {timeout_s:g} s")
    outcome = Outcome(argv, status, out.decode(errors="replace"), err.decode(errors="replace"),
                      error=error, subprocess=True)
    outcome.wall_s = time.perf_counter() - t0
    return outcome


# -- the contract --------------------------------------------------------------------------------
def _no_constants(name: str):
    raise ValueError(f"{name} in JSON")


def strict_json(text: str) -> object:
    """Parsed JSON that may not hold NaN or Infinity (nor numbers that overflow to inf)."""
    doc = json.loads(text, parse_constant=_no_constants)
    bad = non_finite(doc)
    if bad:
        raise ValueError(f"non-finite number at {bad}")
    return doc


def non_finite(doc: object, path: str = "$") -> str | None:
    """The path of the first non-finite number in a parsed document, else None."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return path
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return None
    for key, value in items:
        found = non_finite(value, f"{path}.{key}")
        if found:
            return found
    return None


_NUMBERS = re.compile(r"(?<![\w.])[-+]?(\d[\d_,]*\.?\d*(e[-+]?\d+)?|\.\d+|inf|nan)(?![\w])",
                      re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATHS = re.compile(r"/[^\s:'\",()]+")


def normalise(text: str, limit: int = 110) -> str:
    """A message with paths, quoted values and numbers blanked, for grouping."""
    text = _PATHS.sub("PATH", text)
    text = _QUOTED.sub("'…'", text)
    text = _NUMBERS.sub("N", text)
    return text if len(text) <= limit else text[:limit] + "…"


def _location_ok(rest: str, argv: Sequence[str]) -> bool:
    """The line after ``infer-os: error: `` starts with a file (a path) or a command-line
    option of this command (``--set KEY``: the option and its field), then a message."""
    loc, sep, message = rest.partition(": ")
    if not sep or not message.strip():
        return False
    if loc.startswith("--"):  # "--set", or "--set KEY": the option, then its field
        option = loc.split()[0]
        return any(a == option or a.startswith(option + "=") for a in argv)
    return "/" in loc and not any(c.isspace() for c in loc)


def _finite_files(folder: Path) -> list[tuple[str, str]]:
    """Problems of the JSON and CSV files an ``--out`` folder holds: unparsable or
    non-finite."""
    problems = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            try:
                strict_json(path.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                problems.append((f"--out file *{path.suffix} ({path.name.split('.')[0]}): "
                                 f"{normalise(str(err), 60)}", f"{path}: {err}"))
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                try:
                    strict_json(line)
                except ValueError as err:
                    problems.append((f"--out file {path.name}: {normalise(str(err), 60)}",
                                     f"{path}: {err}: {line[:300]}"))
                    break
        elif path.suffix == ".csv":
            with path.open(newline="") as f:
                bad = next((cell for row in csv.reader(f) for cell in row
                            if cell.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")),
                           None)
            if bad is not None:
                stem = path.name.split(".")[0]
                problems.append((f"--out file {stem}*.csv holds a non-finite number",
                                 f"{path}: cell {bad!r}"))
    return problems


def violations(o: Outcome, *, json_out: bool = False, out_dir: Path | None = None
               ) -> list[tuple[str, str]]:
    """(signature, detail) of every way ``o`` breaks the contract; empty when it keeps it."""
    cmd = o.argv[0] if o.argv else "?"
    if isinstance(o.error, FuzzTimeout):  # grouped by file: the alarm lands anywhere in a loop
        in_file = where(o.error)[0].split(" ")[0] or "?"
        return [(f"{cmd}: hang: no answer within the time bound (in {in_file})",
                 f"{o.error} at {o.where}")]
    if o.error is not None:
        kind = type(o.error).__name__
        memory = " (over the memory bound)" if isinstance(o.error, MemoryError) else ""
        return [(f"{cmd}: traceback: {kind}{memory} escaped main at {where(o.error)[0]}",
                 f"{kind}: {str(o.error)[:400]} at {o.where}")]
    problems: list[tuple[str, str]] = []
    if "Traceback (most recent call last)" in o.stderr:
        last = [ln for ln in o.stderr.strip().splitlines() if ln.strip()][-1]
        problems.append((f"{cmd}: traceback on stderr: {normalise(last, 80)}", o.stderr[-1500:]))
        return problems
    # lines as a terminal shows them: "\n" only (str.splitlines also breaks at \x1c, \x85...)
    lines = [ln.rstrip("\r") for ln in o.stderr.split("\n") if ln.strip()]
    if o.status == 0:
        problems += _json_problems(o, cmd) if json_out else []
        if out_dir is not None and out_dir.is_dir():
            problems += [(f"{cmd}: {s}", d) for s, d in _finite_files(out_dir)]
    elif o.status == 1:
        if not any("ended early: " in ln for ln in lines):
            problems.append((f"{cmd}: exit 1 without a policy failure: "
                             f"{normalise(lines[0] if lines else '(no stderr)')}", o.stderr[-800:]))
        if json_out and o.stdout.strip():
            problems += _json_problems(o, cmd)
    elif o.status == 2:
        if not lines:
            problems.append((f"{cmd}: exit 2 with nothing on stderr", ""))
        for i, ln in enumerate(lines):
            if not ln.startswith(ERROR_PREFIX):
                if not i or not lines[0].startswith(ERROR_PREFIX):
                    which = "a stderr line lacks the 'infer-os: error: ' prefix"
                elif _location_ok(ln, o.argv):
                    which = "the second and later of several errors lack 'infer-os: error: '"
                else:
                    which = "an error message broken over lines (a newline in a name or value)"
                problems.append((f"{cmd}: exit 2: {which}", "\n".join(lines)[:800]))
                break
            if not _location_ok(ln[len(ERROR_PREFIX):], o.argv):
                problems.append((f"{cmd}: exit 2: error names no file: "
                                 f"{normalise(ln[len(ERROR_PREFIX):])}", ln[:500]))
        if json_out and o.stdout.strip():
            problems.append((f"{cmd}: exit 2 but stdout holds output", o.stdout[:300]))
    elif o.status == 3:
        problems.append((f"{cmd}: exit 3 (backend unavailable) from a command needing none: "
                         f"{normalise(lines[0] if lines else '')}", o.stderr[-500:]))
    else:
        problems.append((f"{cmd}: exit status {o.status}", o.stderr[-800:]))
    return problems


def _json_problems(o: Outcome, cmd: str) -> list[tuple[str, str]]:
    try:
        doc = strict_json(o.stdout)
    except ValueError as err:
        return [(f"{cmd} --json: stdout is not one finite JSON object: {normalise(str(err), 60)}",
                 f"{err}: {o.stdout[:600]}")]
    if not isinstance(doc, dict):
        return [(f"{cmd} --json: stdout is JSON but not an object", o.stdout[:300])]
    if cmd == "simulate" and not doc.get("runs"):
        return [(f"{cmd}: exit 0 with no runs (nothing simulated)", o.stdout[:300])]
    return []


# -- checking a case -----------------------------------------------------------------------------
def describe(files: dict[str, bytes | str] | None, limit: int = 4000) -> str:
    """The case's input files, each cut at ``limit`` characters, for the failure message."""
    parts = []
    for name, content in (files or {}).items():
        text = content.decode("utf-8", "backslashreplace") if isinstance(content, bytes) \
            else content
        cut = "" if len(text) <= limit else f"\n... ({len(text) - limit} more characters)"
        parts.append(f"--- {name}\n{text[:limit]}{cut}")
    return "\n".join(parts)


def check(o: Outcome, *, files: dict[str, bytes | str] | None = None, json_out: bool = False,
          out_dir: Path | None = None) -> list[tuple[str, str]]:
    """Record ``o`` in the tally; fail the test when it breaks the contract (unless surveying).
    Returns the problems (empty when the contract held)."""
    problems = violations(o, json_out=json_out, out_dir=out_dir)
    case = f"argv: {' '.join(o.argv)}\n{describe(files)}"
    TALLY.record(current_test(), o, problems, case)
    if problems and not SURVEY:
        shown = "\n".join(f"- {s}\n    {d[:600]}" for s, d in problems)
        raise AssertionError(f"contract broken by `infer-os {' '.join(o.argv)}` "
                             f"(exit {o.status}, {o.wall_s:.2f} s):\n{shown}\n"
                             f"stderr: {o.stderr[-1200:]}\n{case}")
    return problems


@contextlib.contextmanager
def case_dir() -> Iterator[Path]:
    """A fresh folder for one case's files (Hypothesis examples cannot use ``tmp_path``)."""
    TALLY.case(current_test())
    with tempfile.TemporaryDirectory(prefix="infer-os-fuzz-") as tmp:
        yield Path(tmp)


def write_files(root: Path, files: dict[str, bytes | str]) -> None:
    """``files`` (relative name -> content) written under ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def checked_run(root: Path, files: dict[str, bytes | str], argv_of: Callable[[Path], list],
                *, json_out: bool = True, out_dir: Path | None = None
                ) -> tuple[Outcome, list[tuple[str, str]]]:
    """Write ``files`` under ``root``, run ``argv_of(root)`` in process and check it."""
    write_files(root, files)
    outcome = run_main(argv_of(root))
    return outcome, check(outcome, files=files, json_out=json_out, out_dir=out_dir)


def fuzz_settings(max_examples: int):
    """Deterministic Hypothesis settings: derandomized, no database, no deadline (the contract's
    own time bound applies), no shrinking (a hang would be retried for minutes);
    ``INFER_OS_FUZZ_SCALE`` multiplies the number of examples."""
    from hypothesis import HealthCheck, Phase, settings

    scale = float(os.environ.get("INFER_OS_FUZZ_SCALE", "1"))
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=max(1, round(max_examples * scale)),
                    phases=(Phase.explicit, Phase.generate), print_blob=False,
                    suppress_health_check=list(HealthCheck))
