"""Sweep files: a base scenario plus axes of dotted overrides, expanded into points (the full grid
or seeded random samples), every point's scenario validated before anything runs.

```yaml
name: my-sweep
base: quickstart                  # a bundled scenario or a path (relative to this file)
variant: int8-kv                  # optional: one of the base's variants, applied first
overrides: {workload.num_requests: 8}   # optional: fixed dotted overrides, applied next
axes:                             # applied last, in this order; the same keys as --set
  policies.tiering: [{kind: fp16}, {kind: uniform, precision: int8}]
  engine.max_batch: {low: 1, high: 8, step: 1}     # a range: step or num (log: true) values
  engine.kv_budget_bytes: {low: 1.0e7, high: 1.0e8, num: 4, log: true}
  cost_model: [roofline, coefficient]    # special axes: cost_model, variant
samples: 100                      # optional: seeded random points instead of the full grid
seed: 0
baseline: {policies.tiering: {kind: fp16}}  # the speedup reference (default: each axis' first)
```

In random sampling a range without ``step``/``num`` is continuous (log-uniform with ``log``).  A
point is identified by a hash of its axis values and cost model (``point_id``), so a rerun into the
same folder recognises the points it already has.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

import scenarios
from sim.config.frozen import Frozen
from sim.config.scenario import Scenario, apply_override, read_yaml, validate
from sim.errors import UserError
from sim.run.runner import check_scenario
from sim.sweep.axes import MAX_POINTS, Count, Number, RangeAxis  # noqa: F401 - re-exported
from sim.sweep.values import canonical, problem

SPECIAL_AXES = ("cost_model", "variant")  # not scenario keys: the run's cost model, a variant
MAX_SEED = 2**32 - 1  # as a scenario's seed
_SAMPLE_TRIES = 20  # random draws per wanted point before giving up on finding new ones
_NAME = re.compile(r"[^/\\\x00]+")  # a sweep's name: the default results folder sweeps/NAME


class SweepFile(Frozen):
    name: str
    description: str = ""
    base: str
    variant: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    cost_model: Literal["roofline", "coefficient"] | None = None  # default: the base's first
    axes: dict[str, list[Any] | RangeAxis] = Field(min_length=1)
    samples: Count | None = Field(default=None, ge=1, le=MAX_POINTS)
    seed: Count = Field(default=0, ge=0, le=MAX_SEED)
    baseline: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        """YAML 1.1 reads ``1.0e9`` (no sign in the exponent) as a string: make it a number."""
        if isinstance(data, dict):
            axes = data.get("axes")
            if isinstance(axes, dict):
                data = {**data, "axes": {k: [_number(v) for v in a] if isinstance(a, list)
                                         else a for k, a in axes.items()}}
            if isinstance(data.get("baseline"), dict):
                data = {**data, "baseline": {k: _number(v) for k, v in data["baseline"].items()}}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError("expected a name without '/', '\\' or NUL (the results folder is "
                             "sweeps/NAME)")
        return name

    def check(self, path: Path) -> None:
        """What the field types cannot say, each error naming its axis; the grid's size is
        computed from the axes' lengths, so a grid too large is refused before it is made."""
        for key, axis in self.axes.items():
            if isinstance(axis, list) and not axis:
                raise UserError("the axis has no values", file=str(path), field=f"axes.{key}")
            if isinstance(axis, RangeAxis) and self.samples is None and axis.count is None:
                raise UserError("a grid needs step or num (a continuous range is for random "
                                "sampling: samples: N)", file=str(path), field=f"axes.{key}")
            if key in SPECIAL_AXES and not isinstance(axis, list):
                raise UserError("expected a list", file=str(path), field=f"axes.{key}")
            for value in axis if isinstance(axis, list) else ():
                _check_value(key, value, path, f"axes.{key}")
        for key, value in self.overrides.items():
            _check_value("", value, path, f"overrides.{key}")  # a scenario key, not special
        for key, value in (self.baseline or {}).items():
            if key not in self.axes:
                raise UserError("not an axis", file=str(path), field=f"baseline.{key}")
            _check_value(key, value, path, f"baseline.{key}")
        if self.samples is None:
            _check_grid_size(self, path)


COST_MODELS = ("roofline", "coefficient", "calibrated")


def _check_value(key: str, value: Any, path: Path, field: str) -> None:
    why = problem(value)
    if why is None and key == "cost_model" and value not in COST_MODELS:
        why = f"unknown cost model {_short(value)} ({', '.join(COST_MODELS)})"
    if why is None and key == "variant" and not isinstance(value, str):
        why = f"expected a variant's name, not {_short(value)}"
    if why is not None:
        raise UserError(why, file=str(path), field=field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def grid_size(spec: SweepFile) -> tuple[int, str]:
    """The number of grid points (the product of the axes' lengths, nothing built) and the axis
    with the most values."""
    lengths = {k: len(a) if isinstance(a, list) else (a.count or 1) for k, a in spec.axes.items()}
    return math.prod(lengths.values()), max(lengths, key=lambda k: lengths[k])


def _check_grid_size(spec: SweepFile, path: Path | None) -> None:
    size, longest = grid_size(spec)
    if size > MAX_POINTS:
        n = len(a) if isinstance(a := spec.axes[longest], list) else a.count
        shown = f"{size:,}" if size < 10**15 else f"over 10^{int(math.log10(size))}"
        raise UserError(f"the grid has {shown} points (at most {MAX_POINTS:,}; this axis has "
                        f"{n:,} values): use samples: N or fewer values",
                        file=str(path) if path else None, field=f"axes.{longest}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) else value


@dataclass(frozen=True)
class Point:
    """One simulation of the sweep: its axis values and the scenario they resolve to."""

    point_id: str
    values: dict[str, Any]  # axis -> value, in the file's axis order
    cost_model: str
    scenario: Scenario
    base_dir: Path
    is_baseline: bool = False


@dataclass(frozen=True)
class Sweep:
    path: Path
    spec: SweepFile
    base_path: Path
    context: str  # hash of the base's content, variant and fixed overrides (in point ids)
    points: list[Point]


def point_id(context: str, values: dict[str, Any], cost_model: str) -> str:
    """A stable hash of everything that makes the point's scenario: ``context`` (the base's
    content, the variant and fixed overrides), its axis values and its cost model."""
    doc = json.dumps({"context": context, "cost_model": cost_model, "values": values},
                     sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def label(value: Any) -> Any:
    """A value as a results column shows it: scalars as they are, a policy as ``kind(k=v)``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and "kind" in value:
        params = ", ".join(f"{k}={v}" for k, v in value.items() if k != "kind")
        return f"{value['kind']}({params})" if params else str(value["kind"])
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_sweep(path: Path) -> Sweep:
    """Read, validate and expand the sweep at ``path``; every point is checked."""
    raw = read_yaml(path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as err:
        raise _invalid(err, path) from None
    spec.check(path)
    base_path = _base_path(spec.base, path)
    base = read_yaml(base_path)
    try:
        context = json.dumps([base, spec.variant, spec.overrides], sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError) as err:  # e.g. keys of mixed types
        raise UserError(f"cannot be hashed for the point ids ({type(err).__name__}: {err})",
                        file=str(base_path)) from None
    digest = hashlib.sha256(context.encode()).hexdigest()[:16]
    points = _resolve(spec, path, base, base_path, digest)
    return Sweep(path, spec, base_path, digest, points)


def _invalid(err: ValidationError, path: Path) -> UserError:
    """The first error, named by its field; an axis is a list or a range, so for a mapping
    the range's error is the one to show."""
    errors = err.errors()
    e = next((x for x in errors if "list[any]" not in x["loc"]), errors[0])
    loc = [str(x) for x in e["loc"] if not str(x).startswith(("function-after", "list["))]
    loc = [x for i, x in enumerate(loc) if i < 3 or x not in ("int", "float")]  # Number's tag
    msg = e["msg"].removeprefix("Value error, ")
    if len(loc) == 2 and loc[0] == "axes" and e["type"] == "model_type":
        msg = "expected a list of values or a range {low, high, step or num}"
    return UserError(msg, file=str(path), field=".".join(loc) or None)


def _base_path(name: str, sweep_path: Path) -> Path:
    near = sweep_path.parent / name
    if near.is_file():
        return near
    found = scenarios.locate(name)
    if found is None:
        raise UserError(f"unknown base scenario {name!r} (bundled: "
                        f"{', '.join(scenarios.names())}; or a path)", file=str(sweep_path),
                        field="base")
    return found


def expand(spec: SweepFile) -> list[dict[str, Any]]:
    """The axis values of every point: the grid in file order, or ``samples`` distinct seeded
    random draws; the baseline's values first when they are not among them."""
    if spec.samples is None:
        _check_grid_size(spec, None)
        columns = [a if isinstance(a, list) else a.grid() for a in spec.axes.values()]
        return [dict(zip(spec.axes, combo)) for combo in itertools.product(*columns)]
    # a draw is known by its values' JSON, each list value's written once (not once per draw)
    texts = {k: [canonical(v) for v in a] for k, a in spec.axes.items() if isinstance(a, list)}
    rng, seen, rows = random.Random(spec.seed), set(), []
    for _ in range(spec.samples * _SAMPLE_TRIES):
        values, key = {}, []
        for k, a in spec.axes.items():
            if isinstance(a, list):  # the same draw as rng.choice(a)
                i = rng.randrange(len(a))
                values[k] = a[i]
                key.append(texts[k][i])
            else:
                values[k] = a.sample(rng)
                key.append(canonical(values[k]))
        if tuple(key) not in seen:
            seen.add(tuple(key))
            rows.append(values)
        if len(rows) == spec.samples:
            break
    return rows


def baseline_values(spec: SweepFile) -> dict[str, Any]:
    first = {k: a[0] if isinstance(a, list) else a.at(0) if a.count else a.low
             for k, a in spec.axes.items()}
    return {**first, **(spec.baseline or {})}


def _resolve(spec: SweepFile, path: Path, base: dict, base_path: Path,
             context: str) -> list[Point]:
    variants = base.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise UserError("expected a mapping of variant name -> overrides", file=str(base_path),
                        field="variants")
    rows = expand(spec)
    baseline = {k: v for k, v in baseline_values(spec).items() if k != "cost_model"}
    checked: dict[str, None] = {}  # check_scenario's inputs already checked
    points: dict[str, Point] = {}
    for values in rows:
        point = _point(spec, path, (base, base_path, context), variants, values, checked)
        points.setdefault(point.point_id, point)
    extra: dict[str, Point] = {}  # baselines that are not sweep points: they run first
    for cm in dict.fromkeys(p.cost_model for p in points.values()):
        values = {**baseline, **({"cost_model": cm} if "cost_model" in spec.axes else {})}
        point = _point(spec, path, (base, base_path, context), variants, values, checked, True)
        if point.point_id in points:
            points[point.point_id] = _as_baseline(points[point.point_id])
        else:
            extra[point.point_id] = point
    return [*extra.values(), *points.values()]


def _as_baseline(point: Point) -> Point:
    return Point(point.point_id, point.values, point.cost_model, point.scenario, point.base_dir,
                 is_baseline=True)


def _point(spec: SweepFile, path: Path, origin: tuple[dict, Path, str], variants: dict,
           values: dict[str, Any], checked: dict, is_baseline: bool = False) -> Point:
    base, base_path, context = origin
    data = copy.deepcopy(base)
    variant = values.get("variant", spec.variant)
    if variant is not None:
        if variant not in variants:
            raise UserError(f"unknown variant {variant!r} of {base_path.name} (variants: "
                            f"{', '.join(map(str, variants)) or 'none'})", file=str(path),
                            field="axes.variant" if "variant" in values else "variant")
        changes = variants[variant] or {}
        if not isinstance(changes, dict):
            raise UserError("expected a mapping of dotted.key -> value", file=str(base_path),
                            field=f"variants.{variant}")
        for key, value in changes.items():
            apply_override(data, key, value)
    for key, value in spec.overrides.items():
        apply_override(data, key, value)
    for key, value in values.items():
        if key not in SPECIAL_AXES:
            apply_override(data, key, value)
    try:
        scn = validate(data, str(path))
        cost_model = values.get("cost_model", spec.cost_model) or scn.cost_models[0]
        if cost_model == "coefficient" and scn.coefficient is None:
            raise UserError("cost model 'coefficient' needs a 'coefficient' section",
                            field="cost_model")
        key = _check_key(scn)
        if key not in checked:
            check_scenario(scn, base_path.parent)
            checked[key] = None
    except UserError as err:
        raise _blame(err, path, values) from None
    return Point(point_id(context, values, cost_model), values, cost_model, scn, base_path.parent,
                 is_baseline)


def _check_key(scn: Scenario) -> str:
    """What ``check_scenario`` looks at (not the tiering, buffer or quality settings)."""
    p = scn.policies
    return repr((scn.seed, scn.model, scn.hardware, scn.workload, scn.engine, scn.speculation,
                 p.scheduling, p.speculation.kind))


def _blame(err: UserError, path: Path, values: dict[str, Any]) -> UserError:
    """The error of a point's scenario, named by the axis that caused it when one did."""
    field = err.field or ""
    for key, value in values.items():
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return UserError(f"{err.message} (value {label(value)!r})", file=str(path),
                             field=f"axes.{key}")
    point = ", ".join(f"{k}={label(v)}" for k, v in values.items())
    where = f" ({err.file})" if err.file and err.file != str(path) else ""
    return UserError(f"point {point}: {field or 'scenario'}: {err.message}{where}",
                     file=str(path), field="axes")
