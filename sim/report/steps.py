"""Per-step errors on the ``validate --out`` page: ``steps.{variant}.csv`` (written by
``sim.run.shadow.write_steps_csv``: one row per measured step, the cost model's prediction for
that exact step and the measured time, per step kind) drawn as signed-error boxes per step kind
and as predicted against measured step times; ``validation.json``'s ``shadow`` summary as a
table."""

from __future__ import annotations

from pathlib import Path

from sim.report import plot, style
from sim.report.files import Damaged, read_csv
from sim.report.fmt import format_pct, format_seconds, time_unit
from sim.report.html import damaged, note, table

KINDS = ("prefill", "decode", "verify", "draft", "retier")
MAX_BOX_POINTS = 5000  # per variant: beyond, only the outliers are drawn as dots
STEPS_NOTE = ("The shadow prediction: after the measured run, the cost model is asked about each "
              "step the engine actually ran (same batch, same tokens, same KV), so the error is "
              "the cost model's alone, not the schedule's.  Signed error per step = (predicted - "
              "measured) / measured; \u201cstep\u201d is the whole step.  Hover a dot for the "
              "step.  Below, per variant, each step's predicted against measured time per kind "
              "(on the dashed y = x line the prediction is exact).")


def steps_path(out_dir: Path, variant: str) -> Path | None:
    for name in (variant, variant.replace("/", "_")):
        if (path := out_dir / f"steps.{name}.csv").is_file():
            return path
    return None


def read_steps(path: Path) -> list[dict]:
    """The rows of a steps CSV, times as floats (None when a kind is absent from a step), and
    what the shadow's sub-kinds read (``predicted_retier_work_s``, ``draft_scan_tokens``)."""
    columns = [f"{side}_{kind}_s" for kind in (*KINDS, "step")
               for side in ("predicted", "measured")]
    columns += ["predicted_retier_work_s", "draft_scan_tokens", "draft_compares", "draft_hits"]
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if text == "step":  # a run without steps
        return []
    rows = read_csv(path, required=("step", "phase", "predicted_step_s", "measured_step_s"),
                    numeric=tuple(columns))
    return [{**r, **{c: float(r[c]) if r.get(c) else None for c in columns}} for r in rows]


def _kinds(rows: list[dict]) -> list[str]:
    return [k for k in (*KINDS, "step")
            if any(r[f"measured_{k}_s"] is not None and r[f"predicted_{k}_s"] is not None
                   for r in rows)]


def _tip(variant: str, kind: str, r: dict, p: float, m: float) -> str:
    repeat = f"repeat {r['repeat']}, " if r.get("repeat") else ""  # (files from before: none)
    return (f"{variant}, {repeat}step {r['step']} ({r['phase']}, "
            f"batch {r.get('batch', '?')}): {kind} predicted {format_seconds(p)}, "
            f"measured {format_seconds(m)}"
            + (f", {format_pct((p - m) / m, True)}" if m > 0 else ""))


def shadow_table(runs: list[dict]) -> str:
    """The ``shadow`` summary of ``validation.json`` per variant and kind ("" without one)."""
    rows = []
    for r in runs:
        shadow = r.get("shadow")
        if not isinstance(shadow, dict):
            continue
        for kind, s in shadow.items():
            if isinstance(s, dict):
                rows.append([r["variant"], kind, str(s.get("steps", "-"))]
                            + [format_pct(s.get(k), True) for k in ("median", "p10", "p90")]
                            + [format_pct(s.get(k)) for k in ("median_abs", "floor",
                                                               "floor_abs")])
    if not rows:
        return ""
    return table(["variant", "kind", "steps", "median", "p10", "p90", "median |error|",
                  "noise floor", "model on the twins"], rows, text_columns=2)


def steps_charts(out_dir: Path, runs: list[dict], colors: dict[str, str],
                 notes: list[str]) -> str:
    """Signed error per step kind (a box per variant) and, per variant, predicted against
    measured step time per kind; a damaged CSV is said in place of its variant."""
    by_variant, out = {}, []
    for r in runs:
        path = steps_path(out_dir, r["variant"])
        if path is None:
            continue
        try:
            by_variant[r["variant"]] = read_steps(path)
        except Damaged as err:
            out.append(damaged(err, notes))
    if not by_variant and not out:
        return note("No steps.{variant}.csv in this folder (a `validate --out` without the shadow "
                    "prediction): no per-step errors.")
    boxes = []
    for variant, rows in by_variant.items():
        for kind in _kinds(rows):
            values, hover = [], []
            for r in rows:
                p, m = r[f"predicted_{kind}_s"], r[f"measured_{kind}_s"]
                if p is not None and m is not None and m > 0:
                    values.append((p - m) / m * 100)
                    hover.append(_tip(variant, kind, r, p, m))
            boxes.append((variant, kind, values, hover))
    if boxes:
        fig = plot.box_fig(boxes, colors, title="Per-step signed error by step kind",
                           y_title="(predicted - measured) / measured (%)", height=380,
                           max_points=MAX_BOX_POINTS)
        fig["layout"]["xaxis"].update(categoryorder="array", categoryarray=[*KINDS, "step"])
        out.append(plot.chart(fig))
    scatters = [_scatter(variant, rows) for variant, rows in by_variant.items() if rows]
    if scatters:
        out.append('<div class="grid">' + "".join(scatters) + "</div>")
    return "".join(out)


def _scatter(variant: str, rows: list[dict]) -> str:
    """Predicted against measured time per step, a colour per step kind (``style.OPS``)."""
    kinds = [k for k in _kinds(rows) if k != "step"
             and any(r[f"predicted_{k}_s"] for r in rows)] or ["step"]  # 0 s: not on log axes
    top = max((r[f"{side}_{k}_s"] or 0.0) for r in rows for k in kinds
              for side in ("predicted", "measured"))
    factor, unit = time_unit(top)
    traces = []
    for kind in kinds:
        pts = [(r, r[f"predicted_{kind}_s"], r[f"measured_{kind}_s"]) for r in rows
               if r[f"predicted_{kind}_s"] is not None and r[f"measured_{kind}_s"] is not None]
        traces.append(plot.points(kind, [m * factor for _, _, m in pts],
                                  [p * factor for _, p, _ in pts],
                                  [_tip(variant, kind, r, p, m) for r, p, m in pts],
                                  style.op_color(kind), {"size": 6, "opacity": 0.75},
                                  gl=len(pts) > plot.GL_THRESHOLD))
    fig = plot.scatter_fig(traces, title=f"{variant}: step times",
                           x_title=f"measured ({unit})", y_title=f"predicted ({unit})",
                           diagonal=True, height=360)
    return plot.chart(fig)
