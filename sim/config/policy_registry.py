"""The registry of policies: one table of ``name -> "module:Class"``, read by one loader.

A scenario names a policy (``policies.<family>.kind``) in one of three ways:

- a built-in name: ``BUILTIN`` below, written in the same form as an entry point;
- a name an installed package registers in the entry-point group ``infer_os.policies``
  (``recency = "my_pkg.tiering:RecencyTiering"``); the name must be the class's ``kind`` and may
  not shadow a built-in one;
- an import path, ``"my_pkg.tiering:RecencyTiering"``.

All three resolve through ``load`` and the checks of ``sim.config.policy_check``; errors are
``UserError`` (exit 2), one line each.  Adding a built-in = its class in ``policies/`` + a row here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from importlib.metadata import entry_points
from typing import Any

from sim.config.policy_check import (
    FAMILY_NAMES,
    check_class,
    check_instance,
    instantiate,
    kind_of,
    parameters,
)
from sim.errors import UserError

GROUP = "infer_os.policies"
BUILTIN_SOURCE = "infer-os"

BUILTIN: dict[str, str] = {
    # tiering
    "fp16": "policies.tiering:Fp16Tiering",
    "uniform": "policies.tiering:UniformTiering",
    "progressive": "policies.tiering_paper:ProgressiveTiering",
    "kivi": "policies.tiering_baselines:KiviTiering",
    "streaming": "policies.tiering_baselines:StreamingTiering",
    "h2o": "policies.tiering_baselines:H2OTiering",
    "mikv": "policies.tiering_baselines:MiKVTiering",
    # buffers
    "exact": "policies.buffers:ExactBuffers",
    "preallocate": "policies.buffers:PreallocatedBuffers",
    "adaptive": "policies.buffer_sizing:AdaptiveBuffers",
    "pow2": "policies.buffer_sizing:Pow2Buffers",
    # speculation
    "off": "policies.speculation:NoSpeculation",
    "fixed": "policies.speculation:FixedSpeculation",
    "hf-heuristic": "policies.speculation_control:HfHeuristicSpeculation",
    "goodput": "policies.speculation_control:GoodputSpeculation",
    "dynamic": "policies.speculation_control:DynamicSpeculation",
    # scheduling
    "single": "policies.scheduling:SinglePlacement",
    "static": "policies.scheduling:StaticPlacement",
    "paper": "policies.scheduling_policies:PaperScheduling",
    "amd-hybrid": "policies.scheduling_policies:AmdHybridScheduling",
    "least-finish-time": "policies.scheduling_policies:LeastFinishTimeScheduling",
}

# The family's plain baseline: a technique counts as "enabled" (coefficient model) when the
# scenario's policy for that family is of another kind.
BASELINE_KIND = {"tiering": "fp16", "buffers": "exact", "speculation": "off",
                 "scheduling": "single"}

_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: a name, the class it names and who registered it."""

    name: str
    target: str  # "module:Class"
    source: str  # "infer-os" for built-ins, else the distribution "name version"

    @property
    def builtin(self) -> bool:
        return self.source == BUILTIN_SOURCE

    def describe(self) -> str:
        return ("a built-in" if self.builtin else f"registered by {self.source}") + \
            f" ({self.target})"


@functools.cache
def table() -> dict[str, tuple[Entry, ...]]:
    """Name -> every entry claiming it (more than one is a conflict, refused on use)."""
    rows: dict[str, list[Entry]] = {}
    for name, target in BUILTIN.items():
        rows.setdefault(name, []).append(Entry(name, target, BUILTIN_SOURCE))
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
        rows.setdefault(ep.name, []).append(Entry(ep.name, ep.value, source))
    return {name: tuple(entries) for name, entries in rows.items()}


def refresh() -> None:
    """Read the installed entry points again (after installing a package in this process)."""
    table.cache_clear()


def load(target: str) -> type:
    """The class at ``module:Class``, checked as a policy.  Import errors are one line."""
    if not _PATH.match(target):
        raise UserError(f"{target!r} is not an import path (expected 'package.module:Class')")
    module_name, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = (" (install its package, or put its folder on PYTHONPATH)"
                if isinstance(err, ModuleNotFoundError) else "")
        raise UserError(f"cannot import module {module_name!r} for policy {target!r}: "
                        f"{type(err).__name__}: {first}{hint}") from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserError(f"module {module_name!r} has no {qualname!r} (policy {target!r})")
    check_class(obj, target)
    return obj


def _single(name: str) -> Entry | None:
    entries = table().get(name, ())
    if len(entries) > 1:
        builtin = next((e for e in entries if e.builtin), None)
        if builtin is not None:
            other = next(e for e in entries if not e.builtin)
            raise UserError(f"policy name {name!r} is {other.describe()} and is "
                            f"{builtin.describe()}: a registered name may not shadow a "
                            f"built-in one; rename the entry point in group {GROUP}")
        raise UserError(f"policy name {name!r} is " + " and ".join(
            e.describe() for e in entries) + ": rename one of the entry points")
    return entries[0] if entries else None


def resolve(kind: str) -> type:
    """The class a scenario's ``kind`` names: a registered name or an import path."""
    entry = _single(kind)
    if entry is None and ":" not in kind:
        raise UserError(f"unknown policy kind {kind!r}")
    cls = load(entry.target if entry else kind)
    name = kind_of(cls)
    if entry is not None and not entry.builtin and name != kind:
        raise UserError(f"entry point {kind!r} ({entry.target}, {entry.source}) names a class "
                        f"whose kind is {name!r}: the registered name must be the class's kind")
    if entry is None and name in BUILTIN and BUILTIN[name] != kind and \
            load(BUILTIN[name]) is not cls:
        raise UserError(f"policy {kind!r} has kind {name!r}, the name of a built-in policy "
                        f"({BUILTIN[name]}): a policy may not shadow a built-in name")
    return cls


def known(family: str) -> list[str]:
    """Names of the family's policies that load (for error messages and ``infer-os list``)."""
    out = []
    for name in table():
        try:
            if check_class(resolve(name), name) in (family, None):
                out.append(name)
        except UserError:
            continue
    return out


def build(family: str, spec: Any) -> Any:
    """The ``family`` policy a scenario's ``policies.<family>`` value describes: a mapping with
    ``kind`` and parameters, or a policy object (the Python API).  ``UserError``s name the field
    relative to ``policies.<family>``."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return check_instance(spec, family)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"expected a mapping with a 'kind' ({', '.join(known(family))}; or "
                        "'package.module:Class')")
    kind = spec["kind"]
    if not isinstance(kind, str) or not kind:
        raise UserError(f"expected a policy name or 'package.module:Class', got {kind!r}",
                        field="kind")
    try:
        cls = resolve(kind)
    except UserError as err:
        extra = (f" ({family} policies: {', '.join(known(family))}; or an import path "
                 "'package.module:Class')" if err.message.startswith("unknown") else "")
        raise UserError(err.message + extra, field="kind") from None
    found = check_class(cls, kind)
    if found not in (None, family):
        raise UserError(f"{kind!r} is a {found} policy, not a {family} one", field="kind")
    return instantiate(cls, {k: v for k, v in spec.items() if k != "kind"})


def builtin_classes() -> dict[str, tuple[type, ...]]:
    """Family -> its built-in classes, in table order."""
    out: dict[str, list[type]] = {f: [] for f in FAMILY_NAMES}
    for target in BUILTIN.values():
        cls = load(target)
        family = check_class(cls, target)
        assert family is not None, f"{target}: a built-in states or annotates its family"
        out[family].append(cls)
    return {f: tuple(c) for f, c in out.items()}


FAMILIES = builtin_classes()


def by_kind(family: str) -> dict[str, type]:
    return {kind_of(c): c for c in FAMILIES[family]}


def observes_blocks(policy: Any) -> bool:
    """A tiering policy reads per-block information (default True: the safe choice)."""
    return bool(getattr(policy, "observes_blocks", True))


def observes_load(policy: Any) -> bool:
    """A scheduling policy is asked every step with live load (default True); False: once."""
    return bool(getattr(policy, "observes_load", True))


@dataclasses.dataclass(frozen=True)
class Listed:
    """One policy as ``infer-os list`` shows it (``error`` set when it cannot be used)."""

    name: str
    family: str | None  # None: any (the class says nothing; the scenario key decides)
    source: str
    target: str
    parameters: tuple[tuple[str, str, Any], ...] = ()
    error: str | None = None


def catalogue() -> list[Listed]:
    """Every registered policy, built-in first, each loaded and checked."""
    out = []
    for name, entries in table().items():
        for entry in entries:
            try:
                cls = resolve(name)
                out.append(Listed(name, check_class(cls, name), entry.source, entry.target,
                                  tuple(parameters(cls))))
            except UserError as err:
                out.append(Listed(name, None, entry.source, entry.target, error=err.message))
    return out
