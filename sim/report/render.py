"""``infer-os report DIR``: one self-contained HTML page (inline SVG, no JavaScript) from a
results folder written by ``--out``, chosen by what the folder holds.

``sweep.json`` -> ``sim.report.sweep.render`` (sweep reports); ``validation.json`` (``validate
--out``) -> predicted against measured (``sim.report.validation``); ``results.json``
(``simulate|measure --out``) -> the runs' metrics (``sim.report.runs``).  The last two also draw,
per run, the device timeline from ``trace.{stem}.json`` and KV memory by precision from
``kv.{stem}.csv`` (``stem`` = ``{variant}.{cost model}`` or ``{variant}.measured``, see
``sim.run.output``).
"""

from __future__ import annotations

from pathlib import Path

from sim.errors import UserError
from sim.report.html import read_json
from sim.report.runs import results_page
from sim.report.validation import validation_page


def render(out_dir: Path) -> str:
    """The whole HTML page for the results folder ``out_dir``; ``UserError`` if it is not one."""
    out_dir = Path(out_dir)
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
        return validation_page(out_dir, read_json(out_dir / "validation.json"))
    if (out_dir / "results.json").exists():
        return results_page(out_dir, read_json(out_dir / "results.json"))
    raise UserError(f"{out_dir} holds no results.json, validation.json or sweep.json: not a "
                    "folder written by `infer-os simulate|measure|validate|sweep --out`",
                    field="DIR")


def write_report(out_dir: Path) -> Path:
    """Render and write ``out_dir/report.html``; returns its path."""
    html = render(Path(out_dir))
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
