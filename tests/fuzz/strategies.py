"""Hypothesis strategies for hostile input documents, each a case: ``{relative name: content}``
(the files to write into a fresh folder) plus what the command line needs.

The documents start from the bundled ones (scenarios, hardware and quality profiles, sweeps, a
Hugging Face ``config.json`` of a preset) with their workloads clamped small (``clamp``), so a
case runs in well under a second unless the mutation itself is the size, and are then mutated:
values replaced by hostile ones (NaN, inf, 0, -1, 1e9, 1e20, huge ints, strings, null, lists,
mappings, booleans, dates), keys deleted or added, any schema field set (the paths are read from
the pydantic models, so fields added later are fuzzed too), policies of random kinds and
parameters; and as text: duplicate keys, deep nesting, alias bombs, non-UTF-8 bytes, tabs,
truncation, tags, numbers of 5,000 digits.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import typing
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from pydantic import BaseModel

import scenarios
from sim.config.hardware import PROFILE_DIR, HardwareProfile
from sim.config.model_spec import PRESETS
from sim.config.policy_check import FAMILY_NAMES, parameters
from sim.config.policy_registry import BUILTIN, load
from sim.config.quality_profile import QUALITY_PROFILE_DIR
from sim.config.scenario import Scenario
from sim.sweep.spec import RangeAxis, SweepFile

SCENARIO_DIR = Path(scenarios.__file__).parent
SWEEP_DIR = SCENARIO_DIR / "sweeps"
MAX_REQUESTS = 4
MAX_TOKENS = 96
MAX_VARIANTS = 2
MAX_SAMPLES = 3

Path_ = tuple  # a path into a document: keys and list indices

# -- hostile values ------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
EXTREME_NUMBERS = [NAN, INF, -INF, 0, 0.0, -0.0, -1, 1, 1e9, 1e20, 1e308, 1e-300, 5e-324, 0.5,
                   2**31, 2**63, 2**64, 10**30, -(2**63) - 1, 1e-12, 1e300]
SPECIAL_VALUES: list[Any] = [
    *EXTREME_NUMBERS, True, False, None, "", "x", "1e9", ".nan", "-1", "0", "\u00fc\U0001f600",
    "a" * 5000, [], [1, 2], [None], [[]], {}, {"kind": "fixed"}, {"a": {"b": {"c": [1]}}},
    datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 12, 30), "2024-01-01",
]


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def hostile_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(SPECIAL_VALUES),
        st.sampled_from(SPECIAL_VALUES),  # twice as likely as the rest
        st.integers(),
        st.floats(),
        st.text(max_size=12),
        st.lists(st.integers(-5, 5), max_size=3),
        st.sampled_from([nested(40), nested(120)]),
    )


def plausible_numbers() -> st.SearchStrategy[Any]:
    """Valid-looking values that still reach the run: tiny, zero and boundary numbers."""
    return st.one_of(st.integers(0, 16), st.floats(0, 1), st.sampled_from([1e-9, 1e-300, 64.0]))


# -- documents as trees ------------------------------------------------------------------------
def all_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key or index path into ``doc`` (inner nodes included, the root not)."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += all_paths(value, (*prefix, key))
    return out


def mapping_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """The paths of every mapping in ``doc``, the root ``()`` first."""
    out = [prefix] if isinstance(doc, dict) else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else ()
    for key, value in items:
        out += mapping_paths(value, (*prefix, key))
    return out


def get_path(doc: Any, path: Path_) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def set_path(doc: dict, path: Path_, value: Any) -> None:
    """Like ``--set``: missing or non-container nodes on the way become mappings."""
    node: Any = doc
    for key in path[:-1]:
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            child = node[key]
            if not isinstance(child, (dict, list)):
                node[key] = child = {}
        elif isinstance(node, dict):
            child = node.get(key)
            if not isinstance(child, (dict, list)):
                node[key] = child = {}
        else:
            return
        node = child
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value


def delete_path(doc: Any, path: Path_) -> None:
    parent = get_path(doc, path[:-1])
    del parent[path[-1]]


def _fields(model: type[BaseModel], prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    """(path, FieldInfo) of every field of a pydantic model, through unions, optionals and
    tuples (index 0); not into mappings."""
    out = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        out.append((path, info))
        for sub, sub_path in _submodels(info.annotation, path):
            out += _fields(sub, sub_path)
    return out


def _submodels(tp: Any, path: Path_) -> list[tuple[type[BaseModel], Path_]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tp, path)]
    origin = typing.get_origin(tp)
    if origin is dict:
        return []
    if origin in (tuple, list):
        return [m for a in typing.get_args(tp) if a is not Ellipsis
                for m in _submodels(a, (*path, 0))]
    return [m for a in typing.get_args(tp) for m in _submodels(a, path)]


def schema_paths(model: type[BaseModel]) -> list[Path_]:
    """Every field path of a pydantic model (see ``_fields``)."""
    return sorted({p for p, _ in _fields(model)}, key=str)


SIZE_KEYS = {"num_requests", "prompt_tokens", "output_tokens", "samples", "num", "step"}


def _is_int(tp: Any) -> bool:
    if tp is int:
        return True
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Annotated:
        return _is_int(args[0])
    return typing.get_origin(tp) in (typing.Union, type(int | None)) and any(
        _is_int(a) for a in args if a is not type(None))


def _edges(info: Any, path: Path_) -> tuple[list[Any], list[Any]]:
    """A numeric field's values at and just inside its bounds, and just outside them (the upper
    ones left out for a field that is the size of the work: ``SIZE_KEYS``)."""
    integer = _is_int(info.annotation)
    step = (lambda x, d: x + d) if integer else (lambda x, d: math.nextafter(x, d * math.inf))
    inside_values: list[Any] = []
    outside_values: list[Any] = []
    for m in info.metadata:
        for attr, inward, closed in (("ge", 1, True), ("gt", 1, False), ("le", -1, True),
                                     ("lt", -1, False)):
            edge = getattr(m, attr, None)
            if edge is None or (inward < 0 and SIZE_KEYS & {str(k) for k in path}):
                continue
            edge = int(edge) if integer and float(edge).is_integer() else edge
            inside_values.append(edge if closed else step(edge, inward))
            outside_values.append(step(edge, -inward) if closed else edge)
            if not integer and inward > 0 and edge > 0:
                inside_values.append(edge * 1.5)
    return inside_values, outside_values


def schema_edges(model: type[BaseModel], inside: bool = True) -> dict[Path_, list[Any]]:
    """path -> values at and just inside (or, ``inside=False``, just outside) the bounds of
    every bounded numeric field of a pydantic model."""
    out: dict[Path_, list[Any]] = {}
    for path, info in _fields(model):
        values = _edges(info, path)[0 if inside else 1]
        if values:
            out.setdefault(path, []).extend(values)
    return out


def both(a: dict[Path_, list[Any]], b: dict[Path_, list[Any]]) -> dict[Path_, list[Any]]:
    return {k: [*a.get(k, []), *b.get(k, [])] for k in {*a, *b}}


SCENARIO_PATHS = schema_paths(Scenario)
HARDWARE_PATHS = schema_paths(HardwareProfile)
SWEEP_PATHS = schema_paths(SweepFile)
SCENARIO_INSIDE = schema_edges(Scenario)
SCENARIO_EDGES = both(SCENARIO_INSIDE, schema_edges(Scenario, inside=False))
HARDWARE_INSIDE = schema_edges(HardwareProfile)
HARDWARE_EDGES = both(HARDWARE_INSIDE, schema_edges(HardwareProfile, inside=False))
SWEEP_EDGES = both(schema_edges(SweepFile), schema_edges(SweepFile, inside=False))
RANGE_FIELDS = tuple(RangeAxis.model_fields)
UNKNOWN_KEYS = ["bogus", "", "1", "kind", "Kind", "num_requests ", "__class__", "sources",
                "<<", "~", "variants"]


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


@st.composite
def mutated(draw, doc: dict, schema: list[Path_], max_ops: int = 3,
            numbers_first: bool = False, edges: dict[Path_, list[Any]] | None = None) -> dict:
    """``doc`` with 1 to ``max_ops`` mutations: a value replaced (by a hostile or, for
    numbers, an extreme number), a key deleted, an unknown key added, a schema field set (to a
    hostile value, or to a value at, just inside or just outside its bounds: ``edges``)."""
    doc = copy.deepcopy(doc)
    ops = ["replace", "replace", "schema", "schema", "delete", "unknown", "number"]
    if numbers_first:
        ops += ["number"] * 4
    if edges:
        ops += ["edge"] * (6 if numbers_first else 4)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(ops))
        paths = all_paths(doc)
        if op == "schema":
            set_path(doc, draw(st.sampled_from(schema)), draw(hostile_values()))
        elif op == "edge" and edges:
            path = draw(st.sampled_from(sorted(edges, key=str)))
            set_path(doc, path, draw(st.sampled_from(edges[path])))
        elif op == "unknown":
            where = draw(st.sampled_from(mapping_paths(doc)))
            key = draw(st.one_of(st.sampled_from(UNKNOWN_KEYS), st.text(max_size=6)))
            get_path(doc, where)[key] = draw(hostile_values())
        elif not paths:
            continue
        elif op == "delete":
            delete_path(doc, draw(st.sampled_from(paths)))
        elif op == "number":
            numeric = [p for p in paths if isinstance(get_path(doc, p), (int, float))
                       and not isinstance(get_path(doc, p), bool)] or paths
            set_path(doc, draw(st.sampled_from(numeric)), draw(st.sampled_from(EXTREME_NUMBERS)))
        else:
            set_path(doc, draw(st.sampled_from(paths)), draw(hostile_values()))
    return doc


# -- text-level mutations ------------------------------------------------------------------------
BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80abc", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A flow sequence of YAML aliases whose last item holds ``width ** levels`` leaves."""
    items = [f"&a0 [{', '.join(['x'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def deep(depth: int, mapping: bool = False) -> str:
    return "{a: " * depth + "1" + "}" * depth if mapping else "[" * depth + "]" * depth


def _set_top(lines: list[str], key: str, value: str) -> list[str]:
    """YAML lines with the top-level ``key``'s block (if any) replaced by ``key: value`` at the
    end (so that the damage is not merely a duplicate key)."""
    out, skipping = [], False
    for ln in lines:
        top = bool(ln) and not ln[0].isspace() and not ln.startswith("#")
        if top:
            skipping = ln.split(":")[0].strip("'\"") == key
        if not skipping:
            out.append(ln)
    return [*out, f"{key}: {value}"]


RAW_OPS = ["duplicate", "duplicate_nested", "deep", "bomb", "non_utf8", "nul", "utf16",
           "truncate", "tabs", "empty", "not_a_mapping", "python_tag", "huge_number",
           "merge_key", "long_value", "bom", "crlf"]


@st.composite
def raw_mutated(draw, text: str, bomb_key: str = "variants",
                bomb_at: str = "{{bomb: {{policies.tiering: {{kind: uniform, precision: {b}}}}}}}"
                ) -> bytes:
    """``text`` (a YAML document) damaged as text; ``bomb_at`` places an alias bomb under the
    top-level key ``bomb_key`` where a validator or an error message will walk it."""
    op = draw(st.sampled_from(RAW_OPS))
    lines = text.splitlines()
    top = [i for i, ln in enumerate(lines) if ln and not ln[0].isspace() and ":" in ln
           and not ln.startswith("#")]
    inner = [i for i, ln in enumerate(lines) if ln.startswith("  ") and ":" in ln]
    if op == "duplicate" and top:
        i = draw(st.sampled_from(top))
        key = lines[i].split(":")[0]
        value = dump({key: draw(hostile_values())}).strip()
        lines.append(value if draw(st.booleans()) else lines[i])
    elif op == "duplicate_nested" and inner:
        i = draw(st.sampled_from(inner))
        lines.insert(i + 1, lines[i])
    elif op == "deep":
        depth = draw(st.sampled_from([100, 1_000, 20_000]))
        key = draw(st.sampled_from(["description", "workload", "variants", "name", "axes",
                                    "x-deep"]))
        lines = _set_top(lines, key, deep(depth, draw(st.booleans())))
    elif op == "bomb":
        lines = _set_top(lines, bomb_key, bomb_at.format(b=alias_bomb()))
    elif op == "huge_number":
        numbers = [i for i, ln in enumerate(lines) if ln.rstrip()[-1:].isdigit() and ": " in ln]
        if numbers:
            i = draw(st.sampled_from(numbers))
            lines[i] = lines[i].rsplit(": ", 1)[0] + ": " + "9" * 5000
    elif op == "merge_key":
        lines.append("<<: {bogus: 1}")
    elif op == "long_value":
        lines = _set_top(lines, "description", "y" * 200_000)
    elif op == "python_tag":
        lines.append(draw(st.sampled_from([
            'x: !!python/object/apply:os.system ["true"]', "x: !!python/name:os.system",
            "x: !!binary aGk=", "x: !!set {a, b}", "x: !!timestamp 2024-01-01",
            "x: !custom 1", "seed: !!float 1"])))
    elif op == "tabs":
        lines = [ln.replace("  ", "\t") for ln in lines]
    out = "\n".join(lines) + "\n"
    data = out.encode()
    if op == "non_utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BAD_BYTES)) + data[at:]
    elif op == "nul":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    elif op == "utf16":
        data = out.encode("utf-16")
    elif op == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif op == "empty":
        data = draw(st.sampled_from([b"", b"\n", b"# only a comment\n", b"---\n"]))
    elif op == "not_a_mapping":
        data = draw(st.sampled_from([b"42\n", b"[1, 2]\n", b"~\n", b"x\n", b"--- a\n--- b\n",
                                     b"a: 1\n---\nb: 2\n", b".nan\n", b"!!binary aGk=\n"]))
    elif op == "bom":
        data = b"\xef\xbb\xbf" + data
    elif op == "crlf":
        data = data.replace(b"\n", b"\r\n")
    return data


# -- scenarios -----------------------------------------------------------------------------------
def _clamp_length(dist: Any) -> Any:
    if not isinstance(dist, dict):
        return dist
    dist = dict(dist)
    for key in ("value", "low", "high", "median"):
        if isinstance(dist.get(key), (int, float)):
            dist[key] = min(dist[key], MAX_TOKENS)
    return dist


def clamp(doc: dict, variants: int = MAX_VARIANTS) -> dict:
    """A scenario made small: at most ``MAX_REQUESTS`` requests of at most ``MAX_TOKENS``
    tokens, at most ``variants`` variants."""
    doc = copy.deepcopy(doc)
    wl = doc.setdefault("workload", {})
    wl["num_requests"] = min(int(wl.get("num_requests", 8)), MAX_REQUESTS)
    for key in ("prompt_tokens", "output_tokens"):
        if key in wl:
            wl[key] = _clamp_length(wl[key])
    arrival = wl.get("arrival")
    if isinstance(arrival, dict) and isinstance(arrival.get("concurrency"), int):
        arrival["concurrency"] = min(arrival["concurrency"], MAX_REQUESTS)
    if "variants" in doc:
        doc["variants"] = dict(list(doc["variants"].items())[:variants]) or {"default": {}}
    return doc


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


BASE_SCENARIOS = {p.stem: clamp(_load(p)) for p in sorted(SCENARIO_DIR.glob("*.yaml"))}
PROFILES = {p.stem: _load(p) for p in sorted(PROFILE_DIR.glob("*.yaml"))}
PROFILE_DEVICE = {"cpu-2core-avx512": "cpu", "h200": "gpu", "ryzen-ai-9-hx-370": "igpu"}


def small_scenario(hardware: str = "cpu-2core-avx512", device: str = "cpu", **fields) -> dict:
    """quickstart, clamped, without variants, on ``hardware``; ``fields`` set top-level keys."""
    doc = copy.deepcopy(BASE_SCENARIOS["quickstart"])
    doc.pop("variants", None)
    doc["hardware"] = hardware
    doc["policies"]["scheduling"] = {"kind": "single", "device": device}
    doc.update(fields)
    return doc


@st.composite
def base_scenarios(draw) -> dict:
    """A bundled scenario, clamped, with a drawn subset of its variants."""
    doc = copy.deepcopy(BASE_SCENARIOS[draw(st.sampled_from(sorted(BASE_SCENARIOS)))])
    variants = list(doc.get("variants") or {})
    if variants:
        keep = draw(st.lists(st.sampled_from(variants), min_size=1, max_size=2, unique=True))
        doc["variants"] = {k: doc["variants"][k] for k in keep}
    return doc


POLICY_PARAMS = {name: [p[0] for p in parameters(load(target))]
                 for name, target in BUILTIN.items()}
IMPORT_PATHS = ["os:system", "json:JSONDecoder", "json:loads", "collections:OrderedDict",
                "math:pi", "builtins:object", "sim.errors:UserError", "sim.cli:main",
                "policies.tiering:Fp16Tiering", "policies.scheduling:SinglePlacement",
                "policies.tiering:NoSuchPolicy", "no_such_module_xyz:Thing",
                "tests.plugin_broken:Anything", "os.path:join", "dataclasses:dataclass",
                "policies:Precision", ":", "a:", ":b", "os:", "..:x", "os:system.__call__",
                "policies.tiering:Fp16Tiering.decide"]
KINDS = [*BUILTIN, *IMPORT_PATHS, "", " ", "FP16", "fp16 ", "none", "kind"]


@st.composite
def policy_specs(draw) -> Any:
    """A family's ``{kind, parameters}``: any kind (built-in, import path, garbage), known or
    unknown parameters with hostile or plausible values; sometimes not a mapping at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(hostile_values())
    kind = draw(st.one_of(st.sampled_from(KINDS), st.sampled_from(KINDS), hostile_values()))
    names = (POLICY_PARAMS.get(kind, []) if isinstance(kind, str) else []) + ["bogus"]
    spec = {"kind": kind}
    for _ in range(draw(st.integers(0, 2))):
        spec[draw(st.sampled_from(names))] = draw(st.one_of(hostile_values(),
                                                            plausible_numbers()))
    return spec


@st.composite
def scenario_documents(draw) -> dict:
    """A bundled scenario, clamped, mutated (values, keys, schema fields, policies)."""
    doc = draw(base_scenarios())
    if draw(st.booleans()):
        for family in draw(st.lists(st.sampled_from(FAMILY_NAMES), min_size=1, max_size=2,
                                    unique=True)):
            target = draw(st.sampled_from(["policies", "variants"]))
            spec = draw(policy_specs())
            if target == "variants" and isinstance(doc.get("variants"), dict):
                name = next(iter(doc["variants"]))
                doc["variants"][name] = {**(doc["variants"][name] or {}),
                                         f"policies.{family}": spec}
            else:
                doc["policies"][family] = spec
        if draw(st.booleans()):
            return doc
    return draw(mutated(doc, SCENARIO_PATHS, edges=SCENARIO_EDGES))


@st.composite
def scenario_files(draw) -> bytes:
    """A mutated scenario as YAML bytes; a third of them also damaged as text."""
    text = dump(draw(scenario_documents()))
    if draw(st.integers(0, 2)) == 0:
        return draw(raw_mutated(text))
    return text.encode()


def _param_values(hint: Any, devices: list[str]) -> st.SearchStrategy[Any]:
    """Values a policy parameter of type ``hint`` takes: valid ones, extreme ones."""
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(typing.get_args(hint))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.sampled_from([0, 1, 2, 3, 8, 64, 1024, 10**6, 10**12, -1])
    if hint is float:
        return st.sampled_from([0.0, 1e-9, 0.01, 0.5, 1.0, 2.0, 1e3, 1e9, 1e300, -0.5])
    if hint is str:
        return st.sampled_from([*devices, "nope"])
    return hostile_values()


@st.composite
def valid_policies(draw, family: str, devices: list[str]) -> dict:
    """A built-in policy of ``family`` with 0-2 parameters set to valid or extreme values."""
    kinds = [k for k, cls in BUILTIN_BY_FAMILY.items() if cls[0] == family]
    kind = draw(st.sampled_from(kinds))
    hints = BUILTIN_BY_FAMILY[kind][1]
    spec = {"kind": kind}
    if hints:
        for name in draw(st.lists(st.sampled_from(sorted(hints)), max_size=2, unique=True)):
            spec[name] = draw(_param_values(hints[name], devices))
    return spec


def _builtin_by_family() -> dict[str, tuple[str, dict[str, Any]]]:
    from sim.config.policy_check import _fields as hints_of
    from sim.config.policy_check import check_class

    return {name: (check_class(load(target), name), hints_of(load(target)))
            for name, target in BUILTIN.items()}


BUILTIN_BY_FAMILY = _builtin_by_family()


@st.composite
def extreme_scenarios(draw) -> dict:
    """A bundled scenario, clamped, with valid but extreme settings: 1-4 fields at or just
    inside their bounds and, half the time, built-in policies with extreme parameters.  Most
    of these pass validation: they test the run, its metrics and its time."""
    doc = draw(base_scenarios())
    devices = DEVICES.get(doc.get("hardware"), ["cpu"])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(sorted(SCENARIO_INSIDE, key=str)))
        if path[0] == "coefficient" and "coefficient" not in doc:
            continue
        set_path(doc, path, draw(st.sampled_from(SCENARIO_INSIDE[path])))
    if draw(st.booleans()):
        family = draw(st.sampled_from([f for f in FAMILY_NAMES if f != "scheduling"]))
        doc["policies"][family] = draw(valid_policies(family, devices))
    return doc


# -- --set ---------------------------------------------------------------------------------------
SET_VALUES = [".nan", ".inf", "-.inf", "1e9", "1.0e+9", "1.0e+20", "-1", "0", "[", "{", "}",
              "&a [*a]", "*undefined", "!!python/name:os.system", "2024-01-01", "~", "", "'x'",
              "0x10", "0o7", "1_000", "!!binary aGk=", "[1, 2]", "{kind: fp16}",
              "{kind: os:system}", "{kind: 'json:JSONDecoder'}", "{}", "null", "true",
              "a: b: c", "- x", "9" * 5000, "\t", "{kind: uniform, precision: int8}"]
SET_KEYS = ["", ".", "a..b", "=", ".seed", "seed.", "policies", "policies.tiering.kind.x",
            "workload.num_requests.value", "variants", "variants.new", "variants.new.seed",
            "variants.x.y.z", "name", "model", "hardware", "cost_models", "faults",
            "engine.max_waiting", "workload.arrival.kind"]


@st.composite
def set_options(draw, doc: dict) -> list[str]:
    """1 to 3 ``--set KEY=VALUE`` (and sometimes a ``--variant``) for the scenario ``doc``."""
    variants = [f"variants.{v}" for v in doc.get("variants") or {}]
    schema = [".".join(map(str, p)) for p in SCENARIO_PATHS]
    argv = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(schema), st.sampled_from(SET_KEYS + variants),
                             st.text(max_size=8)))
        edges = SCENARIO_EDGES.get(tuple(key.split(".")), [])
        value = draw(st.one_of(st.sampled_from(SET_VALUES),
                               hostile_values().map(lambda v: json.dumps(v, default=str)),
                               st.sampled_from(edges or [1]).map(repr)))
        argv += ["--set", f"{key}={value}"]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--variant", draw(st.sampled_from([*(doc.get("variants") or {}), "nope", ""]))]
    return argv


# -- hardware and quality profiles ---------------------------------------------------------------
@st.composite
def hardware_cases(draw) -> tuple[dict, bytes]:
    """(scenario naming ``hw.yaml``, a bundled profile mutated) - figures most often set to
    extreme numbers (near-zero rates, inf, 1e308)."""
    name = draw(st.sampled_from(sorted(PROFILES)))
    if draw(st.booleans()):  # valid extremes: figures at or just inside their bounds
        profile = copy.deepcopy(PROFILES[name])
        for _ in range(draw(st.integers(1, 3))):
            group, _, key = draw(st.sampled_from(sorted(HARDWARE_INSIDE, key=str)))
            item = draw(st.sampled_from(profile[group]))  # a device or a memory bus
            if key in item:  # a figure it cites (a new one would need a source)
                item[key] = draw(st.sampled_from(HARDWARE_INSIDE[(group, 0, key)]))
    else:
        profile = draw(mutated(PROFILES[name], HARDWARE_PATHS, numbers_first=True,
                               edges=HARDWARE_EDGES))
    text = dump(profile)
    data = draw(raw_mutated(text)) if draw(st.integers(0, 5)) == 0 else text.encode()
    return small_scenario("hw.yaml", PROFILE_DEVICE[name]), data


QUALITY = _load(QUALITY_PROFILE_DIR / "smollm2-135m.yaml")
QUALITY_PATHS: list[Path_] = [("base_ppl",), ("penalties",), *(("penalties", k) for k in
                                                               ("int8", "int4", "int2",
                                                                "missing", "int3")),
                              ("command",), ("date",)]


@st.composite
def quality_cases(draw) -> tuple[dict, bytes]:
    """(scenario naming ``q.yaml`` with a quantizing tiering policy, the bundled quality profile
    mutated)."""
    doc = copy.deepcopy(QUALITY)
    doc["runs"] = doc.get("runs", [])[:1]
    text = dump(draw(mutated(doc, QUALITY_PATHS, numbers_first=True)))
    data = draw(raw_mutated(text)) if draw(st.integers(0, 5)) == 0 else text.encode()
    tiering = draw(st.sampled_from([{"kind": "uniform", "precision": "int4"},
                                    {"kind": "progressive"}, {"kind": "h2o"}]))
    scn = small_scenario(quality={"profile": draw(st.sampled_from(["q.yaml", "./q.yaml"]))})
    scn["policies"]["tiering"] = tiering
    scn["engine"]["kv_budget_bytes"] = draw(st.sampled_from([2e6, 1e7, 1e9]))
    return scn, data


# -- Hugging Face config.json --------------------------------------------------------------------
def hf_config(preset: str) -> dict:
    """The ``config.json`` of a preset (the keys ``spec_from_hf_dict`` reads)."""
    s = PRESETS[preset]
    if not s.gated_ffn:
        return {"model_type": "gpt2", "n_embd": s.hidden, "n_layer": s.num_layers,
                "n_head": s.num_heads, "n_inner": s.ffn_hidden, "vocab_size": s.vocab,
                "n_positions": s.max_context_tokens, "tie_word_embeddings": s.tied_embeddings}
    return {"model_type": "llama", "hidden_size": s.hidden, "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim, "intermediate_size": s.ffn_hidden, "vocab_size": s.vocab,
            "tie_word_embeddings": s.tied_embeddings,
            "max_position_embeddings": s.max_context_tokens}


MODEL_KEYS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
              "tie_word_embeddings", "max_position_embeddings", "n_embd", "n_layer", "n_head",
              "n_inner", "n_positions"]
MODEL_VALUES = [0, -1, 1, 2, 3, 5, 7, 1e9, 10**12, 10**30, 2**63, "64", "", None, [64], {},
                True, False, 1.5, NAN, INF, -INF, 1e-9, "gpt2", "llama"]


@st.composite
def model_configs(draw) -> bytes:
    """A preset's ``config.json`` with keys set to zero, negative, non-dividing, huge, string,
    null, list values or deleted; sometimes not JSON (or not a JSON object) at all."""
    cfg = hf_config(draw(st.sampled_from(["smollm2-135m", "gpt2", "tinyllama-1.1b"])))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(MODEL_KEYS))
        if draw(st.integers(0, 4)) == 0:
            cfg.pop(key, None)
        else:
            cfg[key] = draw(st.one_of(st.sampled_from(MODEL_VALUES), hostile_values()))
    text = json.dumps(cfg, default=str)
    raw = draw(st.integers(0, 7))
    if raw == 0:
        return draw(st.sampled_from([b"", b"[1, 2]", b"42", b'"gpt2"', b"null", b"{", b"\xff{}",
                                     json.dumps([cfg]).encode(), text.encode("utf-16"),
                                     b'{"model_type": "llama"}']))
    if raw == 1:
        return text.encode()[:draw(st.integers(0, len(text)))]
    return text.encode()


@st.composite
def model_cases(draw) -> tuple[dict, bytes]:
    """(scenario whose ``model.spec`` or ``model.draft`` is the damaged config, its bytes)."""
    cfg = draw(model_configs())
    where = draw(st.sampled_from(["model/config.json", "model", "./model/config.json"]))
    scn = small_scenario()
    if draw(st.integers(0, 3)) == 0:  # the draft model of speculation
        scn["model"]["draft"] = where
        scn["policies"]["speculation"] = {"kind": "fixed", "k": 2}
    else:
        scn["model"]["spec"] = where
    return scn, cfg


# -- workload traces and acceptance traces -------------------------------------------------------
TRACE_COLUMNS = ["arrival_s", "prompt_tokens", "output_tokens"]
TRACE_CELLS = ["0", "0.5", "1", "16", "64", "-1", "nan", "inf", "-inf", "1e20", "1e9",
               "99999999999999999999", "1000000000", "", "x", " 16", "16.0", "0x10", "1_000",
               "\u00fc", "-0", "1e-300"]


@st.composite
def trace_files(draw) -> bytes:
    """A workload CSV: up to 8 rows, mostly plausible cells, some hostile; a header with
    columns missing, repeated or extra; sometimes damaged bytes or a 200 kB field."""
    header = list(TRACE_COLUMNS)
    change = draw(st.integers(0, 6))
    if change == 0:
        header.pop(draw(st.integers(0, 2)))
    elif change == 1:
        header.append(draw(st.sampled_from(["extra", "arrival_s", ""])))
    elif change == 2:
        header = draw(st.permutations(header))
    plausible = {"arrival_s": st.floats(0, 10).map(lambda x: f"{x:.3f}"),
                 "prompt_tokens": st.integers(1, MAX_TOKENS).map(str),
                 "output_tokens": st.integers(1, 32).map(str)}
    rows = []
    hostile = draw(st.booleans())  # else every cell plausible
    for _ in range(draw(st.integers(0, 8))):
        row = []
        for col in header:
            cell = plausible.get(col, st.just("1"))
            if hostile and draw(st.integers(0, 7)) == 0:
                cell = st.sampled_from(TRACE_CELLS)
            row.append(draw(cell))
        rows.append(",".join(row))
    text = "\n".join([",".join(header), *rows]) + "\n"
    data = text.encode()
    raw = draw(st.integers(0, 11))
    if raw == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([*BAD_BYTES, b"\x00", b'"'])) + data[at:]
    elif raw == 1:
        data += b"1," + b"9" * 200_000 + b",1\n"
    elif raw == 2:
        data = draw(st.sampled_from([b"", b"\n", b"\xef\xbb\xbf" + data, data.replace(b"\n", b"\r"),
                                     text.encode("utf-16")]))
    return data


@st.composite
def trace_cases(draw) -> tuple[dict, bytes]:
    scn = small_scenario()
    scn["workload"]["arrival"] = {"kind": "trace", "path": draw(st.sampled_from(
        ["trace.csv", "./trace.csv"]))}
    return scn, draw(trace_files())


@st.composite
def acceptance_cases(draw) -> tuple[dict, bytes]:
    """(a speculating scenario whose ``speculation.acceptance_trace`` is ``acc.txt``, its bytes:
    0/1 outcomes with some hostile tokens and separators)."""
    tokens = st.one_of(st.sampled_from(["0", "1"]), st.sampled_from(["0", "1"]),
                       st.sampled_from(["2", "-1", "0.5", "nan", "", "x", "01", "1.0", "true"]))
    seps = st.sampled_from([" ", ",", "\n", "\t", ",,", ", "])
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        parts += [draw(tokens), draw(seps)]
    data = "".join(parts).encode()
    if draw(st.integers(0, 6)) == 0:
        data = draw(st.sampled_from([b"", b"\xff\x01", b"1 \x00 0", "1 0".encode("utf-16")]))
    scn = small_scenario()
    scn["model"]["draft"] = draw(st.sampled_from(["smollm2-135m", "gpt2"]))
    scn["policies"]["speculation"] = draw(st.sampled_from(
        [{"kind": "fixed", "k": 2}, {"kind": "dynamic"}, {"kind": "goodput"}]))
    scn["speculation"] = {"acceptance_trace": "acc.txt"}
    scn["engine"]["max_draft_len"] = draw(st.sampled_from([0, 1, 4, 8]))
    return scn, data


# -- sweeps --------------------------------------------------------------------------------------
HAND_SWEEP = {"name": "fz", "base": "base.yaml",
              "axes": {"policies.tiering": [{"kind": "fp16"},
                                            {"kind": "uniform", "precision": "int8"}],
                       "engine.max_batch": {"low": 1, "high": 2, "step": 1}},
              "seed": 0}
AXIS_VALUES: list[Any] = [datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 1, 1), NAN,
                          INF, None, [], {}, "x", -1, 0, 1e9, True, nested(30)]
AXIS_KEYS = [*SCENARIO_PATHS, ("cost_model",), ("variant",), ("",), ("a..b",), ("seed.",)]
RANGES: list[Any] = [{"low": 1, "high": 1e9, "step": 1}, {"low": 0, "high": 1e18, "num": 10**12},
                     {"low": NAN, "high": NAN, "num": 2}, {"low": 1, "high": INF, "num": 3},
                     {"low": -INF, "high": 1, "step": 1}, {"low": 1, "high": 2, "step": 1e-12},
                     {"low": 1, "high": 2, "num": 0}, {"low": 0, "high": 1, "num": 3, "log": True},
                     {"low": 1e-300, "high": 1e300, "num": 3, "log": True},
                     {"low": 1, "high": 2}, {"low": "1", "high": "2", "num": 2},
                     {"low": datetime.date(2024, 1, 1), "high": datetime.date(2024, 2, 1),
                      "num": 2}]


def _sweep_bases() -> dict[str, tuple[dict, dict]]:
    """name -> (sweep document with ``base: base.yaml`` and few samples, its base, clamped)."""
    out = {"hand": (HAND_SWEEP, small_scenario())}
    for path in sorted(SWEEP_DIR.glob("*.yaml")):
        doc = _load(path)
        base = BASE_SCENARIOS[doc["base"]]
        doc["base"] = "base.yaml"
        doc["samples"] = min(doc.get("samples") or MAX_SAMPLES, MAX_SAMPLES)
        out[path.stem] = (doc, base)
    return out


SWEEP_BASES = _sweep_bases()


@st.composite
def sweep_documents(draw) -> tuple[dict, dict]:
    """(sweep document, base scenario), the sweep mutated: its fields, its axes (values,
    ranges, keys, dates), sizes and seeds; now and then the base too."""
    sweep, base = copy.deepcopy(SWEEP_BASES[draw(st.sampled_from(sorted(SWEEP_BASES)))])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["fields", "axis_value", "axis_range", "new_axis", "size",
                                   "base_path", "base", "edge_axis", "edge_axis"]))
        axes = sweep.get("axes") if isinstance(sweep.get("axes"), dict) else None
        if op == "fields":
            sweep = draw(mutated(sweep, SWEEP_PATHS, max_ops=1, edges=SWEEP_EDGES))
        elif op == "axis_value" and axes:
            key = draw(st.sampled_from(list(axes)))
            value = draw(st.one_of(st.sampled_from(AXIS_VALUES), hostile_values()))
            if isinstance(axes[key], list) and axes[key]:
                axes[key][draw(st.integers(0, len(axes[key]) - 1))] = value
            else:
                axes[key] = [value]
        elif op == "axis_range" and axes:
            key = draw(st.sampled_from(list(axes)))
            rng = axes[key] if isinstance(axes[key], dict) else {"low": 1, "high": 4, "num": 2}
            if draw(st.booleans()):
                rng = copy.deepcopy(draw(st.sampled_from(RANGES)))
            else:
                rng[draw(st.sampled_from(RANGE_FIELDS))] = draw(st.one_of(
                    st.sampled_from(EXTREME_NUMBERS), hostile_values()))
            axes[key] = rng
        elif op == "new_axis" and axes is not None:
            key = ".".join(map(str, draw(st.sampled_from(AXIS_KEYS))))
            axes[key] = draw(st.one_of(
                st.lists(st.one_of(st.sampled_from(AXIS_VALUES), hostile_values()),
                         max_size=3),
                st.sampled_from(RANGES).map(copy.deepcopy)))
        elif op == "edge_axis" and axes is not None:  # valid extremes, swept
            path = draw(st.sampled_from(sorted(SCENARIO_INSIDE, key=str)))
            axes[".".join(map(str, path))] = draw(st.lists(
                st.sampled_from(SCENARIO_INSIDE[path]), min_size=1, max_size=2))
        elif op == "size":
            field = draw(st.sampled_from(["samples", "seed"]))
            sweep[field] = draw(st.sampled_from([*EXTREME_NUMBERS, None, "3", 10**9,
                                                 datetime.date(2024, 1, 1)]))
        elif op == "base_path":
            sweep["base"] = draw(st.sampled_from(["", ".", "/", "sweep.yaml", "missing.yaml",
                                                  "quickstart", "sub", "/dev/null", "base",
                                                  "sub/../base.yaml"]))
        elif op == "base":
            base = draw(mutated(base, SCENARIO_PATHS, max_ops=1, edges=SCENARIO_EDGES))
    return sweep, base


@st.composite
def sweep_files(draw) -> tuple[bytes, bytes]:
    """(sweep.yaml bytes, base.yaml bytes); a sixth of the sweeps damaged as text (alias bombs
    in an axis, where the point ids hash every value)."""
    sweep, base = draw(sweep_documents())
    text = dump(sweep)
    data = draw(raw_mutated(text, bomb_key="axes", bomb_at="{{engine.max_batch: {b}}}")) \
        if draw(st.integers(0, 5)) == 0 else text.encode()
    return data, dump(base).encode()


# -- faults and overload -------------------------------------------------------------------------
TIMES = [0, 1e-9, 0.001, 0.05, 1.0, 30.0, 1e9, 1e9 + 1, -1, NAN]
DEVICES = {"cpu-2core-avx512": ["cpu"], "h200": ["gpu"],
           "ryzen-ai-9-hx-370": ["cpu", "igpu", "npu"]}


@st.composite
def fault_events(draw, devices: list[str], valid: bool = True) -> Any:
    """One event: of a known kind with numbers at or inside their bounds (``valid``), or of any
    kind with any of them past their bounds, or a hostile value somewhere."""
    def pick(good: list, bad: list) -> Any:
        return draw(st.sampled_from(good if valid else [*good, *bad]))

    kind = pick(["slow", "device-failure", "kv-shrink", "alloc-cap", "step-error"], ["bogus"])
    event: dict[str, Any] = {"kind": kind}
    if kind != "step-error":
        event["start_s"] = start = pick([0, 1e-9, 0.001, 0.05, 1.0, 30.0, 1e9], [1e9 + 1, -1, NAN])
        if draw(st.booleans()):
            later = [t for t in (1e-9, 0.001, 0.05, 1.0, 30.0, 1e9) if t > start] or [None]
            event["end_s"] = pick(later, [start, 0, 1e9 + 1, INF])
    if kind == "slow":
        event.update(device=pick(devices, ["nope", ""]), factor=pick([1, 1.5, 1000], [1001, 0.5]))
    elif kind == "device-failure":
        event["device"] = pick(devices, ["nope", ""])
    elif kind == "kv-shrink":
        key = pick(["budget_frac", "budget_bytes"], ["both", "neither"])
        if key in ("budget_frac", "both"):
            event["budget_frac"] = pick([1e-9, 0.01, 0.5, 1], [1.5, 0])
        if key in ("budget_bytes", "both"):
            event["budget_bytes"] = pick([1, 1e3, 1e6, 1e15], [1e16, 0])
    elif kind == "alloc-cap":
        event["cap_bytes"] = pick([1, 1e3, 1e6, 1e9, 1e15], [0, -1])
    elif kind == "step-error":
        event["at_step"] = pick([1, 2, 3, 10, 10**9], [0, 10**9 + 1])
        event["phase"] = pick(["any", "prefill", "decode"], ["x"])
    if not valid and draw(st.integers(0, 3)) == 0:
        event[draw(st.sampled_from([*event, "bogus"]))] = draw(hostile_values())
    return event


@st.composite
def faults_documents(draw) -> dict:
    """A bundled scenario, clamped, with a ``faults:`` block of 1-4 events (a mapping or a
    list) and sometimes an overload: a fast Poisson arrival and a bounded waiting queue."""
    doc = draw(base_scenarios())
    devices = DEVICES.get(doc.get("hardware"), ["cpu"])
    valid = draw(st.integers(0, 3)) > 0
    events = draw(st.lists(fault_events(devices, valid), min_size=1, max_size=4))
    if draw(st.booleans()):
        doc["faults"] = {"events": {f"e{i}": e for i, e in enumerate(events)}}
    else:
        doc["faults"] = {"events": events}
    if draw(st.booleans()):
        doc["workload"]["arrival"] = {"kind": "poisson", "rate_per_s": draw(st.sampled_from(
            [1.0, 100.0, 1e6, 1e9]))}
        doc["engine"]["max_waiting"] = draw(st.sampled_from([None, 0, 1, 2, 10**9]))
    if not valid and draw(st.booleans()):
        doc = draw(mutated(doc, SCENARIO_PATHS, max_ops=1, edges=SCENARIO_EDGES))
    return doc
