"""Fitted quality files: the quality model's penalties and base perplexity fitted from real
perplexity runs (``infer-os calibrate-quality`` on any text; ``benchmarks/quality_fit.py`` for the
bundled ones), which a scenario names as ``quality: {profile: NAME-or-PATH}``.

A bundled name resolves to ``sim/config/profiles/quality/NAME.yaml``; anything with a suffix is
a path, resolved by the scenario path rule (``sim.config.paths.resolve_path``).
The file's ``base_ppl`` and ``penalties`` (delta-PPL per unit of attention share at int8 / int4,
per unit of block share at int2, and per unit of attention mass that is missing: offloaded or
evicted; ``sim.quality.model``) become the
``QualityConfig`` fields, each cited to the file; the rest of the file (command, date, held-out
errors, the runs themselves) is the record of where they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from sim.config.frozen import MAX_PPL, Frozen, user_error
from sim.config.paths import exists, resolve_path
from sim.config.yaml_io import load_yaml
from sim.errors import UserError

QUALITY_PROFILE_DIR = Path(__file__).parent / "profiles" / "quality"
FIELD = "quality.profile"
# the file's penalty names -> QualityConfig fields
PENALTY_FIELDS = {"int8": "int8_delta_ppl", "int4": "int4_delta_ppl", "int2": "int2_delta_ppl",
                  "missing": "missing_delta_ppl"}


# a number in the file: an int or a float, finite (never a string or a bool)
_Number = Annotated[float, Strict()]


def _penalty():
    return Field(ge=0, le=MAX_PPL)  # delta-PPL per unit of attention share


class _Penalties(Frozen):
    int8: _Number = _penalty()
    int4: _Number = _penalty()
    int2: _Number = _penalty()
    missing: _Number = _penalty()


class _Fitted(BaseModel):
    """The figures the simulator takes from the file; the rest of it is the record."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    base_ppl: _Number = Field(gt=0, le=MAX_PPL)
    penalties: _Penalties


def bundled_quality_profiles() -> list[str]:
    return sorted(p.stem for p in QUALITY_PROFILE_DIR.glob("*.yaml"))


def resolve(name_or_path: str, base_dir: Path | None = None) -> Path:
    """A bundled profile name, or a path by the scenario path rule (``sim.config.paths``)."""
    if Path(name_or_path).suffix:
        return resolve_path(name_or_path, base_dir)
    path = QUALITY_PROFILE_DIR / f"{name_or_path}.yaml"
    if not exists(path):
        raise UserError(f"unknown quality profile {name_or_path!r} "
                        f"(bundled: {', '.join(bundled_quality_profiles()) or 'none'})",
                        field=FIELD)
    return path


def read(name_or_path: str, base_dir: Path | None = None) -> dict[str, Any]:
    """The whole file, checked to hold a positive ``base_ppl`` and the four penalties (>= 0),
    all finite.  A ``UserError`` is said of ``quality.profile`` (the scenario's field), with the
    file's own key in the message, one line per problem."""
    path = resolve(name_or_path, base_dir)
    try:
        data = load_yaml(path, "quality profile")
        if not isinstance(data, dict):
            raise UserError("expected a mapping", file=str(path))
        _Fitted.model_validate(data)
    except ValidationError as err:
        raise _restated(user_error(err, data), path) from None
    except UserError as err:
        raise _restated(err, path) from None
    return data


def _restated(err: UserError, path: Path) -> UserError:
    """``err``'s problems as the scenario reports them: at ``quality.profile``, naming the file
    (and the key in it)."""
    return UserError.collect([
        UserError(f"quality profile {str(path)!r}: " + (f"{e.field}: " if e.field else "")
                  + e.message, field=FIELD)
        for e in err.errors])


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
