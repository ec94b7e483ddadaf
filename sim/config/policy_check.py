"""What every policy class must be, checked once when a scenario (or the Python API) names it:
built-in and plugin policies alike (docs/policies.md).

- a frozen dataclass, with a ``kind`` field whose string default is its name, and ``decide``;
- of one family: stated by ``family: ClassVar[str]`` or read from the annotation of
  ``decide``'s observation argument (both, when given, must agree); with neither, the family is
  the scenario key the policy stands under;
- parameters validated from the fields' type hints (pydantic): unknown names, wrong types and
  non-finite floats are refused, each naming the parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from policies import (
    BufferDecision,
    BufferObservation,
    Placement,
    SchedulingObservation,
    SpecDecision,
    SpecObservation,
    TieringDecision,
    TieringObservation,
)
from sim.errors import UserError

OBSERVATION: dict[str, type] = {"tiering": TieringObservation, "buffers": BufferObservation,
                                "speculation": SpecObservation,
                                "scheduling": SchedulingObservation}
DECISION: dict[str, type] = {"tiering": TieringDecision, "buffers": BufferDecision,
                             "speculation": SpecDecision, "scheduling": Placement}
FAMILY_NAMES = tuple(OBSERVATION)
GUIDE = "docs/policies.md"


def _not_a_policy(name: str, why: str) -> UserError:
    return UserError(f"{name} is not a policy: {why} (see {GUIDE})")


def kind_of(cls: type) -> str:
    """The class's name: the default of its ``kind`` field."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "kind")


@functools.cache
def check_class(cls: Any, name: str) -> str | None:
    """``cls`` checked as a policy class; returns its family (None: neither stated nor
    annotated, so whatever key it stands under).  ``name`` says where it came from in the
    error."""
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise _not_a_policy(name, "a policy is a frozen dataclass (@dataclass(frozen=True))")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise _not_a_policy(name, "the dataclass is not frozen (@dataclass(frozen=True))")
    kind = next((f for f in dataclasses.fields(cls) if f.name == "kind"), None)
    if kind is None or not isinstance(kind.default, str) or not kind.default:
        raise _not_a_policy(name, "it needs a field `kind` whose default is its name, e.g. "
                                  "kind: Literal[\"mine\"] = \"mine\"")
    if not callable(getattr(cls, "decide", None)):
        raise _not_a_policy(name, "it has no decide(observation) method")
    stated, inferred = _stated_family(cls, name), _inferred_family(cls)
    if stated and inferred and stated != inferred:
        raise _not_a_policy(name, f"it states family {stated!r} but its decide takes a "
                                  f"{OBSERVATION[inferred].__name__} ({inferred})")
    return stated or inferred


def _stated_family(cls: type, name: str) -> str | None:
    stated = cls.__dict__.get("family")
    if stated is None or any(f.name == "family" for f in dataclasses.fields(cls)):
        return None
    if stated not in FAMILY_NAMES:
        raise _not_a_policy(name, f"family {stated!r} is not one of {', '.join(FAMILY_NAMES)}")
    return stated


def _inferred_family(cls: type) -> str | None:
    params = list(inspect.signature(cls.decide).parameters)
    if len(params) < 2:
        return None
    try:
        hint = typing.get_type_hints(cls.decide).get(params[1])
    except Exception:  # an annotation that does not resolve: compare by name
        hint = cls.decide.__annotations__.get(params[1])
    for family, obs_type in OBSERVATION.items():
        if hint is obs_type or hint == obs_type.__name__:
            return family
    return None


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """Parameter name -> type hint (``Any`` where the hint does not resolve), ``kind`` aside."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)
            if f.init and f.name != "kind"}


@functools.cache
def _validator(cls: type) -> TypeAdapter:
    params = TypedDict(f"{cls.__name__}Parameters", _fields(cls), total=False)  # type: ignore
    params.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
        extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
    return TypeAdapter(params)


def parameters(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of every parameter; default ``...`` when it has none."""
    out = []
    for f in dataclasses.fields(cls):
        if f.init and f.name != "kind":
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else ...)
            hint = _fields(cls)[f.name]
            out.append((f.name, getattr(hint, "__name__", None) if isinstance(hint, type)
                        else str(hint).replace("typing.", ""), default))
    return out


def _is_number(hint: Any) -> bool:
    return hint in (int, float) or (typing.get_origin(hint) in (typing.Union, type(int | None))
                                    and bool({int, float} & set(typing.get_args(hint)))
                                    and bool not in typing.get_args(hint))


def instantiate(cls: type, params: dict[str, Any]) -> Any:
    """An instance of the (checked) policy class from scenario parameters, validated from the
    fields' type hints.  Raises ``UserError`` whose field is the parameter."""
    kind, fields = kind_of(cls), _fields(cls)
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"unknown parameter {key!r} of policy {kind!r} (parameters: "
                            f"{known})", field=str(key))
        if isinstance(value, bool) and _is_number(fields[key]):
            raise UserError(f"policy {kind!r}: expected a number, got {value!r}", field=key)
    try:
        values = _validator(cls).validate_python(params)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise UserError(f"policy {kind!r}: {e['msg']} (got {e.get('input')!r})",
                        field=where or None) from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:  # the class's own checks (__post_init__)
        raise UserError(f"policy {kind!r}: {err}") from None


def check_instance(policy: Any, family: str) -> Any:
    """A policy object given directly (the Python API), checked like a named one."""
    cls = type(policy)
    found = check_class(cls, f"{cls.__module__}:{cls.__qualname__}")
    if found not in (None, family):
        raise UserError(f"a {found} policy ({kind_of(cls)!r}) cannot be the {family} policy")
    for name, _hint in _fields(cls).items():
        value = getattr(policy, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"policy {kind_of(cls)!r}: parameter {name} is {value}: expected a "
                            "finite number", field=name)
    return policy
