"""Scenario files: one YAML validated once into frozen pydantic models (``extra="forbid"``).

A scenario may name **variants** (dotted overrides run side by side) and any number of cost models;
``--set dotted.key=value`` overrides anything (values parsed as YAML) after the variant's own.
Every size a loop or an allocation depends on has an upper bound, checked before any work starts,
and every float is finite (docs/simulator-notes.md#limits-and-validation).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, model_validator

from sim.config import policy_registry
from sim.config.faults import FaultsConfig
from sim.config.frozen import Frozen, user_error
from sim.config.policy_check import FAMILY_NAMES
from sim.config.sections import (  # noqa: F401 - re-exported: the scenario's sections
    MAX_BATCH,
    MAX_BLOCK_TOKENS,
    MAX_DRAFT_LAYERS,
    MAX_DRAFT_LEN,
    MAX_INTERVAL_STEPS,
    MAX_NGRAM,
    MAX_QUANT_GROUP,
    MAX_RATE_PER_S,
    MAX_SEED,
    MAX_SIGMA,
    MAX_THREADS,
    MAX_VARIANTS,
    MAX_WEIGHT,
    Arrival,
    AttentionConfig,
    BackendConfig,
    ClosedLoop,
    Coefficient,
    CoefficientConfig,
    EngineConfig,
    Fixed,
    Length,
    LogNormal,
    ModelConfig,
    Poisson,
    QualityConfig,
    SpeculationSetup,
    TraceFile,
    Uniform,
    WorkloadConfig,
)
from sim.config.yaml_io import load_yaml, parse_yaml
from sim.errors import UserError


class PoliciesConfig(Frozen):
    """One policy object per family, from ``{kind: ..., parameters}`` or given as an object
    (sim/config/policy_registry.py: built-in names, registered plugins, import paths)."""

    tiering: Any = None
    buffers: Any = None
    speculation: Any = None
    scheduling: Any = None

    @model_validator(mode="before")
    @classmethod
    def _build(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping of family -> {kind: ..., params}")
        out = {}
        for family, spec in data.items():
            if family not in FAMILY_NAMES:
                raise ValueError(f"unknown policy family {family!r}")
            try:
                out[family] = policy_registry.build(family, spec)
            except UserError as err:  # named at the policy's field (validate adds the file)
                where = f"policies.{family}" + (f".{err.field}" if err.field else "")
                raise err.at(field=where) from None
        return out


def _every_family(policies: PoliciesConfig) -> PoliciesConfig:
    missing = [f"policies.{f}" for f in FAMILY_NAMES if getattr(policies, f) is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         "required")
    return policies


def _needed(value: CoefficientConfig | None, info: ValidationInfo):
    if value is None and "coefficient" in info.data.get("cost_models", ()):
        raise ValueError("cost model 'coefficient' needs a 'coefficient' section")
    return value


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("name at least one cost model (roofline, coefficient, calibrated)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"cost model {twice[0]!r} is listed twice")
    return names


CostModelName = Literal["roofline", "coefficient", "calibrated"]


class Scenario(Frozen):
    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    model: ModelConfig
    hardware: str
    # "calibrated" needs a profile from `infer-os calibrate` (--profile); at least one
    cost_models: Annotated[tuple[CostModelName, ...], AfterValidator(_distinct)] = ("roofline",)
    coefficient: Annotated[CoefficientConfig | None, AfterValidator(_needed)] = Field(
        default=None, validate_default=True)
    workload: WorkloadConfig = WorkloadConfig()
    engine: EngineConfig = EngineConfig()
    speculation: SpeculationSetup = SpeculationSetup()
    backend: BackendConfig = BackendConfig()
    attention: AttentionConfig = AttentionConfig()
    quality: QualityConfig = QualityConfig()
    policies: Annotated[PoliciesConfig, AfterValidator(_every_family)]
    faults: FaultsConfig = FaultsConfig()
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)


def parse_set(item: str) -> tuple[str, Any]:
    """``dotted.key=value`` with the value parsed as YAML (``sim.config.yaml_io``)."""
    key, sep, raw = item.partition("=")
    if not sep or not _is_dotted(key):
        raise UserError(f"malformed override {item!r} (expected dotted.key=value)", field="--set")
    if key.split(".")[0] == "variants":
        raise UserError(f"cannot change variants ({key!r}): edit them in the scenario, "
                        "or pick some with --variant", field="--set")
    try:
        return key, parse_yaml(raw) if raw else ""
    except UserError as err:
        raise UserError.collect([
            UserError(f"value of {key!r}: " + (f"{e.field}: " if e.field else "") + e.message,
                      field="--set") for e in err.errors]) from None


def _is_dotted(key: Any) -> bool:
    return isinstance(key, str) and bool(key) and all(key.split("."))


def apply_override(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def validate(data: dict, file: str, where: str = "") -> Scenario:
    """``data`` as a ``Scenario``; else a ``UserError`` with one line per problem, each at
    ``file`` and the field (after ``where``, e.g. ``variants.NAME -> ``)."""
    try:
        return Scenario.model_validate(data, context={"base_dir": Path(file).parent})
    except ValidationError as err:
        raise user_error(err, data, file=file, where=where) from None
    except UserError as err:  # from a file the scenario names (a quality profile)
        raise err.at(file=file, field=where + (err.field or "")) from None


def read_yaml(path: Path) -> dict:
    """The scenario (or sweep) file at ``path`` as a mapping (``sim.config.yaml_io`` rules)."""
    data = load_yaml(path, "scenario")
    if not isinstance(data, dict):
        raise UserError("a scenario must be a YAML mapping", file=str(path))
    return data


def resolve_runs(path: Path, sets: list[str],
                 only: list[str] | None = None) -> list[tuple[str, Scenario]]:
    """Every variant of the scenario at ``path`` (or those named in ``only``), fully validated,
    with ``--set`` applied last: a ``--set`` need only make sense for the variants selected.

    Errors are all reported, each once: one the base scenario (with ``--set``) has too is
    blamed on its field plainly, one only a variant's overrides cause on
    ``variants.NAME -> field``."""
    base = read_yaml(path)
    overrides = [parse_set(s) for s in sets]
    variants = _variants(base, str(path), only)
    runs, errors = [], []
    plain: set[tuple[str | None, str]] | None = None  # the base's own errors, once needed
    for name, changes in variants.items():
        data = _with_overrides(base, [*changes.items(), *overrides])
        try:
            runs.append((name, validate(data, str(path))))
        except UserError as err:
            if not changes:  # the base's own errors
                errors += err.errors
                continue
            if plain is None:
                plain = _errors_of(_with_overrides(base, overrides), str(path))
            where = f"variants.{name}"
            errors += [e if (e.field, e.message) in plain else
                       UserError(e.message, file=e.file,
                                 field=f"{where} -> {e.field}" if e.field else where)
                       for e in err.errors]
    if errors:
        raise UserError.collect(errors)
    return runs


def _variants(base: dict, file: str, only: list[str] | None) -> dict[str, dict[str, Any]]:
    """The variants to run (name -> overrides), in file order, checked."""
    variants = base.get("variants") or {"default": {}}
    if not isinstance(variants, dict):
        raise UserError("expected a mapping of variant name -> overrides", file=file,
                        field="variants")
    if len(variants) > MAX_VARIANTS:
        raise UserError(f"more than {MAX_VARIANTS:,} variants", file=file, field="variants")
    unknown = [v for v in only or [] if v not in variants]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r} (variants: "
                        f"{', '.join(map(str, variants))})", file=file, field="--variant")
    out = {}
    for name, changes in variants.items():
        if only is not None and name not in only:
            continue
        if changes is not None and not isinstance(changes, dict):
            raise UserError("expected a mapping of dotted.key -> value", file=file,
                            field=f"variants.{name}")
        for key in changes or {}:
            if not _is_dotted(key) or key.split(".")[0] == "variants":
                raise UserError(f"{key!r} is not a dotted key of the scenario", file=file,
                                field=f"variants.{name}")
        out[str(name)] = changes or {}
    return out


def _with_overrides(base: dict, overrides: list[tuple[str, Any]]) -> dict:
    data = copy.deepcopy({key: value for key, value in base.items() if key != "variants"})
    for key, value in overrides:
        apply_override(data, key, value)
    return data


def _errors_of(data: dict, file: str) -> set[tuple[str | None, str]]:
    """(field, message) of every error of ``data`` as a scenario (none when it is valid)."""
    try:
        validate(data, file)
    except UserError as err:
        return {(e.field, e.message) for e in err.errors}
    return set()
