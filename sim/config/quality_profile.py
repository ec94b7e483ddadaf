"""Fitted quality files: the quality model's penalties and base perplexity fitted from real
perplexity runs (``benchmarks/quality_fit.py``), which a scenario names as
``quality: {profile: NAME-or-PATH}``.

A bundled name resolves to ``sim/config/profiles/quality/NAME.yaml``; anything with a suffix is
a path, resolved by the scenario path rule (``sim.config.paths.resolve_path``).
The file's ``base_ppl`` and ``penalties`` (delta-PPL per unit of attention share at int8 / int4 /
int2, and per unit of attention mass that is missing: offloaded or evicted) become the
``QualityConfig`` fields, each cited to the file; the rest of the file (command, date, held-out
errors, the runs themselves) is the record of where they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sim.config.paths import resolve_path
from sim.errors import UserError

QUALITY_PROFILE_DIR = Path(__file__).parent / "profiles" / "quality"
FIELD = "quality.profile"
# the file's penalty names -> QualityConfig fields
PENALTY_FIELDS = {"int8": "int8_delta_ppl", "int4": "int4_delta_ppl", "int2": "int2_delta_ppl",
                  "missing": "missing_delta_ppl"}


def bundled_quality_profiles() -> list[str]:
    return sorted(p.stem for p in QUALITY_PROFILE_DIR.glob("*.yaml"))


def resolve(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A bundled profile name, or a path by the scenario path rule (``sim.config.paths``)."""
    if Path(name_or_path).suffix:
        return resolve_path(name_or_path, base_dir)
    path = QUALITY_PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise UserError(f"unknown quality profile {name_or_path!r} "
                        f"(bundled: {', '.join(bundled_quality_profiles()) or 'none'})",
                        field=FIELD)
    return path


def read(name_or_path: str, base_dir: Path | None = None) -> dict[str, Any]:
    """The whole file, checked to hold a positive ``base_ppl`` and the four penalties (>= 0)."""
    path = resolve(name_or_path, base_dir)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read quality profile {str(path)!r} ({err.strerror})",
                        field=FIELD) from None
    except yaml.YAMLError:
        raise UserError(f"quality profile {str(path)!r} is not valid YAML", field=FIELD) from None
    pens = data.get("penalties") if isinstance(data, dict) else None
    if not isinstance(pens, dict) or set(pens) != set(PENALTY_FIELDS):
        raise UserError(f"quality profile {str(path)!r} needs 'penalties' with exactly "
                        f"{', '.join(PENALTY_FIELDS)}", field=FIELD)
    values = [data.get("base_ppl"), *pens.values()]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
            or data["base_ppl"] <= 0 or min(pens.values()) < 0:
        raise UserError(f"quality profile {str(path)!r}: base_ppl must be > 0 and penalties "
                        f">= 0", field=FIELD)
    return data


def config_fields(name_or_path: str, base_dir: Path | None = None) -> dict[str, Any]:
    """The ``QualityConfig`` fields the profile sets (a scenario's own values override them)."""
    data = read(name_or_path, base_dir)
    source = f"fitted: quality profile {name_or_path} ({data.get('command', '?')}, " \
             f"{data.get('date', '?')})"
    out: dict[str, Any] = {"base_ppl": float(data["base_ppl"])}
    for key, field in PENALTY_FIELDS.items():
        # Coefficient values must be > 0: a penalty fitted to exactly 0 is kept as a negligible one
        out[field] = {"value": max(float(data["penalties"][key]), 1e-9), "source": source}
    return out


def write(path: Path, data: dict[str, Any], header: str = "") -> None:
    text = yaml.safe_dump(data, sort_keys=False, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + text)
