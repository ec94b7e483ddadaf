"""Reading a results folder for ``infer-os report``, damage included.

The document (``results.json``, ``validation.json``) is checked field by field: when it is wrong
there is nothing to draw, so it is a ``UserError`` naming the file and the field.  A run's own
files (Chrome trace, KV timeline CSV, per-request CSV) that cannot be read raise ``Damaged``: the
page draws everything else and says, in place of the chart, which file is damaged and how.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from sim.errors import UserError

MAX_KV_POINTS = 1500  # KV timeline points per chart (the peak of each bucket is kept)
RUN_FILE_PREFIXES = ("trace.", "kv.", "requests.")


@dataclass(frozen=True)
class Span:
    """One op of a device timeline: ``key`` names the op (its colour); ``note`` adds to its
    hover text; times in seconds."""

    lane: str
    start: float
    duration: float
    key: str
    note: str = ""


class Damaged(Exception):
    """A file of the folder that cannot be drawn; ``str()`` says what is wrong with it."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{self.path.name} is damaged ({problem})")


# -- the document -----------------------------------------------------------------------------

NUMBER = (int, float)
STATS = ("ttft_s", "tpot_s", "e2e_s")


def read_document(path: Path, kind: str) -> dict:
    """``results.json`` (``kind`` "results") or ``validation.json`` ("validation"), checked for
    what the report reads; ``UserError`` naming the file and the field otherwise."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read it as JSON ({err}): a truncated or foreign file?",
                        file=str(path)) from None
    check = _Checker(path)
    check.of(doc, dict, "", "an object")
    check.of(doc.get("runs"), list, "runs", "a list of runs")
    check.optional(doc, "scenario", str)
    check.optional(doc, "backend", str)
    inc = doc.get("incomplete")
    if inc is not None:
        check.of(inc, dict, "incomplete", "an object")
        for key in ("runs_written", "runs_planned"):
            check.of(inc.get(key), int, f"incomplete.{key}", "a count")
    for i, run in enumerate(doc["runs"]):
        where = f"runs[{i}]"
        check.of(run, dict, where, "an object")
        check.of(run.get("variant"), str, f"{where}.variant", "a name")
        if kind == "results":
            check.of(run.get("cost_model", 0), (str, type(None)), f"{where}.cost_model",
                     "a name or null")
            check.metrics(run.get("metrics"), f"{where}.metrics")
        else:
            check.of(run.get("cost_model"), str, f"{where}.cost_model", "a name")
            for side in ("predicted", "measured"):
                check.metrics(run.get(side), f"{where}.{side}")
            errors = run.get("relative_error")
            check.of(errors, dict, f"{where}.relative_error", "an object")
            for name, value in errors.items():
                check.of(value, (*NUMBER, type(None)), f"{where}.relative_error.{name}",
                         "a number or null")
            per_request = run.get("per_request", {})
            check.of(per_request, dict, f"{where}.per_request", "an object")
            for name, stats in per_request.items():
                check.stats(stats, f"{where}.per_request.{name}",
                            ("mean", "p50", "p90", "p99", "max_abs"), required=False)
    return doc


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def of(self, value, types, field: str, expected: str) -> None:
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            got = "nothing" if value is None else type(value).__name__
            raise UserError(f"expected {expected}, found {got}", file=str(self.path),
                            field=field or None)

    def optional(self, node: dict, key: str, types) -> None:
        if key in node:
            self.of(node[key], types, key, f"a {types.__name__}")

    def metrics(self, metrics, where: str) -> None:
        self.of(metrics, dict, where, "an object of metrics")
        if "throughput_tok_s" not in metrics:
            raise UserError("no 'throughput_tok_s'", file=str(self.path), field=where)
        for name in ("throughput_tok_s", "speedup_vs_baseline", "kv_memory_saved_frac"):
            if name in metrics:
                self.of(metrics[name], (*NUMBER, type(None)), f"{where}.{name}",
                        "a number or null")
        for name in ("kv_peak_bytes", "num_completed", "num_failed"):
            self.of(metrics.get(name), NUMBER, f"{where}.{name}", "a number")
        for name in STATS:
            self.stats(metrics.get(name), f"{where}.{name}", ("p50",), required=True)

    def stats(self, stats, where: str, keys: tuple[str, ...], required: bool) -> None:
        self.of(stats, dict, where, "an object of percentiles")
        for key in keys:
            if required or key in stats:
                if key not in stats:
                    raise UserError(f"no {key!r}", file=str(self.path), field=where)
                self.of(stats[key], (*NUMBER, type(None)), f"{where}.{key}",
                        "a number or null")


def incomplete_note(doc: dict) -> str | None:
    """What a document written by an interrupted run says of itself, else None."""
    inc = doc.get("incomplete")
    if inc is None:
        return None
    return (f"written by an interrupted run: {inc['runs_written']} of {inc['runs_planned']} "
            "runs (the others are not in this folder)")


def unfinished_folder(out_dir: Path) -> bool:
    """Run files without the document that lists them: the run that wrote them did not end
    (killed, or still going)."""
    return any(p.name.startswith(RUN_FILE_PREFIXES) or p.name.endswith(".part")
               for p in out_dir.iterdir())


# -- a run's files ----------------------------------------------------------------------------

def run_files(out_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    """A run's trace, KV timeline and per-request CSV (``stem``: see ``sim.run.output``)."""
    return (out_dir / f"trace.{stem}.json", out_dir / f"kv.{stem}.csv",
            out_dir / f"requests.{stem}.csv")


def read_csv(path: Path, required: tuple[str, ...] = (),
             numeric: tuple[str, ...] | None = ()) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts; ``Damaged`` when it cannot be read, a
    ``required`` column is missing, a row is cut short or too long, or a cell of a ``numeric``
    column (None: every column) is neither empty nor a number."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, ValueError, csv.Error) as err:
        raise Damaged(path, f"cannot read it as CSV: {err}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise Damaged(path, f"no column {missing[0]!r}")
    for i, row in enumerate(rows, 2):
        if None in row.values():
            raise Damaged(path, f"line {i} is cut short: a truncated file?")
        if None in row:
            raise Damaged(path, f"line {i} has more cells than the header")
        for column in header if numeric is None else numeric:
            cell = row.get(column)
            if cell:
                try:
                    float(cell)
                except ValueError:
                    raise Damaged(path, f"line {i}, {column}: {cell!r} is not a number") \
                        from None
    return rows


def trace_spans(path: Path) -> list[Span]:
    """The device ops of a Chrome trace (pid 1, complete events), times in seconds;
    ``Damaged`` when it is not one."""
    try:
        events = json.loads(path.read_text(encoding="utf-8"))["traceEvents"]
    except (OSError, ValueError) as err:
        raise Damaged(path, f"cannot read it as JSON: {err}; a truncated file?") from None
    except (KeyError, TypeError):
        raise Damaged(path, "not a Chrome trace: no traceEvents list") from None
    try:
        lanes = {e["tid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("pid") == 1 and e.get("name") == "thread_name"}
        return [Span(lanes.get(e["tid"], str(e["tid"])), e["ts"] / 1e6, e["dur"] / 1e6,
                         e["name"], f"batch {e['args']['batch']}"
                         if "batch" in e.get("args", {}) else "")
                for e in events if e.get("ph") == "X" and e.get("pid") == 1]
    except (KeyError, TypeError, AttributeError) as err:
        raise Damaged(path, f"a device event is malformed ({type(err).__name__}: {err})") \
            from None


def kv_timeline(path: Path) -> tuple[list[float], dict[str, list[float]]]:
    """Times (s) and bytes per precision: the rows where the bytes change (a step chart holds
    the value in between) and the last, thinned to ``MAX_KV_POINTS`` rows by keeping the row
    with the most bytes in each bucket (peaks survive); ``Damaged`` when it cannot be read."""
    rows = read_csv(path, required=("time_s",), numeric=None)
    if any(not v for r in rows for v in r.values()):
        raise Damaged(path, "a row has an empty cell")
    names = [k for k in (rows[0] if rows else {}) if k != "time_s"]
    rows = [r for i, r in enumerate(rows) if i in (0, len(rows) - 1)
            or any(r[k] != rows[i - 1][k] for k in names)]
    step = max(1, math.ceil(len(rows) / MAX_KV_POINTS))
    kept = [max(rows[i:i + step], key=lambda r: sum(float(r[k]) for k in names))
            for i in range(0, len(rows), step)]
    return ([float(r["time_s"]) for r in kept],
            {k: [float(r[k]) for r in kept] for k in names})
