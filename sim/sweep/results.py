"""A sweep's results folder: the append-only log of finished points (what a rerun skips), the
results table (one row per point, Parquet and CSV) and the ``sweep.json`` manifest.

    DIR/points.jsonl     one JSON record per finished point, appended as each one ends
    DIR/results.parquet  the table, consolidated at the end of every run (needs pyarrow)
    DIR/results.csv      the same table
    DIR/sweep.json       the manifest: the sweep file, axes, point counts, executor, wall time

A kill loses at most the points in flight: every finished one is already a line in the log; the
table and the manifest are each replaced whole (written aside, then renamed).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from sim.errors import UserError
from sim.sweep.pointlog import POINTS_FILE as POINTS_FILE  # the log's name, with the others
from sim.sweep.spec import Point, label

MANIFEST_FILE = "sweep.json"
PARQUET_FILE = "results.parquet"
CSV_FILE = "results.csv"

# (column, path in the run's metrics): the main metrics of the JSON contract, flattened
METRICS: tuple[tuple[str, str], ...] = (
    ("throughput_tok_s", "throughput_tok_s"),
    ("decode_tok_s", "decode_tok_s"),
    ("makespan_s", "makespan_s"),
    ("ttft_p50_s", "ttft_s.p50"),
    ("ttft_p90_s", "ttft_s.p90"),
    ("tpot_p50_s", "tpot_s.p50"),
    ("tpot_p90_s", "tpot_s.p90"),
    ("kv_peak_bytes", "kv_peak_bytes"),
    ("kv_fp16_equiv_peak_bytes", "kv_fp16_equiv_peak_bytes"),
    ("kv_memory_saved_frac", "kv_memory_saved_frac"),
    ("delta_ppl", "quality.delta_ppl_mean"),
    ("quality_pct", "quality.quality_pct"),
    ("spec_acceptance_rate", "spec_acceptance_rate"),
    ("num_requests", "num_requests"),
    ("num_completed", "num_completed"),
    ("num_failed", "num_failed"),
)
METRIC_COLUMNS = (*(c for c, _ in METRICS), "speedup_vs_baseline")
_INT_COLUMNS = {"kv_peak_bytes", "kv_fp16_equiv_peak_bytes", "num_requests", "num_completed",
                "num_failed"}


def flat_metrics(metrics: dict) -> dict:
    out = {}
    for column, dotted in METRICS:
        node = metrics
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[column] = node
    return out


def rows(points: list[Point], records: dict[str, dict]) -> list[dict]:
    """One row per point that has a record, in the sweep's order: axis values, then metrics;
    speedup is throughput over the baseline point's under the same cost model."""
    reference = {p.cost_model: (records.get(p.point_id) or {}).get("metrics", {})
                 .get("throughput_tok_s") for p in points if p.is_baseline}
    out = []
    for p in points:
        rec = records.get(p.point_id)
        if rec is None:
            continue
        row = {"point_id": p.point_id, **{k: label(v) for k, v in p.values.items()},
               "cost_model": p.cost_model, "is_baseline": p.is_baseline,
               "status": rec["status"], "error": rec["error"]}
        metrics = rec.get("metrics") or {}
        row.update({c: metrics.get(c) for c, _ in METRICS})
        ref, mine = reference.get(p.cost_model), row["throughput_tok_s"]
        row["speedup_vs_baseline"] = float(f"{mine / ref:.12g}") if ref and mine else None
        out.append(row)
    return out


def column_types(table: list[dict]) -> dict[str, str]:
    """One type per column (Parquet needs it): bool, int, float or str."""
    types = {}
    for column in table[0] if table else ():
        values = [r[column] for r in table if r[column] is not None]
        if column in _INT_COLUMNS:
            types[column] = "int"
        elif column in METRIC_COLUMNS:
            types[column] = "float"
        elif values and all(isinstance(v, bool) for v in values):
            types[column] = "bool"
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            types[column] = "int"
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in values):
            types[column] = "float"
        else:
            types[column] = "str"
    return types


def _cast(value, kind: str):
    if value is None:
        return None
    return {"bool": bool, "int": int, "float": float, "str": str}[kind](value)


def write_table(out_dir: Path, table: list[dict]) -> list[str]:
    """``results.csv`` and, with pyarrow installed, ``results.parquet``; the files written."""
    types = column_types(table)
    typed = [{c: _cast(r[c], types[c]) for c in types} for r in table]
    written = [CSV_FILE]
    tmp = out_dir / (CSV_FILE + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(types))
        writer.writeheader()
        writer.writerows({c: "" if v is None else v for c, v in r.items()} for r in typed)
    os.replace(tmp, out_dir / CSV_FILE)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # the CSV holds the same table
        return written
    arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    schema = pa.schema([(c, arrow[t]) for c, t in types.items()])
    tmp = out_dir / (PARQUET_FILE + ".tmp")
    pq.write_table(pa.Table.from_pylist(typed, schema=schema), tmp)
    os.replace(tmp, out_dir / PARQUET_FILE)
    return [PARQUET_FILE, *written]


def read_table(out_dir: Path) -> list[dict]:
    """The results table of a sweep folder: from Parquet when pyarrow can read it, else CSV."""
    try:
        import pyarrow.parquet as pq

        if (out_dir / PARQUET_FILE).exists():
            return pq.read_table(out_dir / PARQUET_FILE).to_pylist()
    except ImportError:
        pass
    types = read_manifest(out_dir).get("column_types", {})
    with (out_dir / CSV_FILE).open(newline="") as f:
        return [{c: _from_csv(v, types.get(c, "str")) for c, v in r.items()}
                for r in csv.DictReader(f)]


def _from_csv(text: str, kind: str):
    if kind == "str":
        return text  # an empty cell is an empty string (the error of an ok point)
    return None if text == "" else _cast(text == "True" if kind == "bool" else text, kind)


def read_manifest(out_dir: Path) -> dict:
    """The folder's manifest ({} when there is none); a corrupt one is a user error."""
    doc, problem = load_manifest(out_dir)
    if problem:
        raise UserError(f"{problem}: rerun the sweep into this folder to rewrite it",
                        file=str(out_dir / MANIFEST_FILE))
    return doc


def load_manifest(out_dir: Path) -> tuple[dict, str | None]:
    """The folder's manifest and, when it cannot be read as one, why ({} and the reason)."""
    path = out_dir / MANIFEST_FILE
    try:
        doc = json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        return {}, None
    except OSError as err:
        return {}, f"cannot read it ({err.strerror or err})"
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        return {}, f"not JSON ({type(err).__name__})"
    if not isinstance(doc, dict) or not isinstance(doc.get("runs", []), list):
        return {}, "not a sweep manifest (a JSON object with a list of runs)"
    return doc, None


def write_manifest(out_dir: Path, doc: dict) -> None:
    tmp = out_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, out_dir / MANIFEST_FILE)  # never a half-written manifest
