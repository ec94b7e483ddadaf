"""``infer-os report DIR``: one self-contained HTML page (Plotly charts, plotly.js inlined once:
it reads offline) from a results folder written by ``--out``, chosen by what the folder holds.

``sweep.json`` -> ``sim.report.sweep.render`` (sweep reports); ``validation.json`` (``validate
--out``) -> predicted against measured (``sim.report.validation``); ``results.json``
(``simulate|measure --out``) -> the runs' metrics (``sim.report.runs``).  The last two also draw,
per run, the device timeline from ``trace.{stem}.json`` and KV memory by precision from
``kv.{stem}.csv`` (``stem`` = ``{variant}.{cost model}`` or ``{variant}.measured``, see
``sim.run.output``).
"""

from __future__ import annotations

from pathlib import Path

from sim.engine.trace_sink import write_atomic
from sim.errors import UserError
from sim.report.files import read_document, unfinished_folder
from sim.report.runs import results_page
from sim.report.validation import validation_page


def render(out_dir: Path, notes: list[str] | None = None) -> str:
    """The whole HTML page for the results folder ``out_dir``; ``UserError`` if it is not one or
    its document is damaged.  A damaged or missing run file is drawn as a warning on the page
    and said in ``notes``, as is a folder written by an interrupted run."""
    out_dir = Path(out_dir)
    notes = [] if notes is None else notes
    if not out_dir.is_dir():
        raise UserError(f"no such folder: {out_dir}", field="DIR")
    if (out_dir / "sweep.json").exists():
        try:
            from sim.report import sweep as sweep_report
        except ImportError:
            raise UserError(f"{out_dir} is a sweep folder (sweep.json) and sweep reports need "
                            "the module sim.report.sweep, which is not installed here",
                            field="DIR") from None
        return sweep_report.render(out_dir)
    if (out_dir / "validation.json").exists():
        doc = read_document(out_dir / "validation.json", "validation")
        return validation_page(out_dir, doc, notes)
    if (out_dir / "results.json").exists():
        return results_page(out_dir, read_document(out_dir / "results.json", "results"), notes)
    if unfinished_folder(out_dir):
        raise UserError(f"{out_dir} holds run files but no results.json or validation.json: the "
                        "run writing it did not finish (killed, or still going); run it again",
                        field="DIR")
    raise UserError(f"{out_dir} holds no results.json, validation.json or sweep.json: not a "
                    "folder written by `infer-os simulate|measure|validate|sweep --out`",
                    field="DIR")


def write_report(out_dir: Path, notes: list[str] | None = None) -> Path:
    """Render and write ``out_dir/report.html`` (whole, or not at all); returns its path."""
    html = render(Path(out_dir), notes)
    path = Path(out_dir) / "report.html"
    write_atomic(path, html, field="DIR")
    return path
