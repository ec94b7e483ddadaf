"""Fault injection (a scenario's ``faults:`` block): events the engine applies during a run, each a
kind and a window on the engine clock (docs/simulator-notes.md#faults).

```yaml
faults:
  events:                           # a mapping of names to events (or a list)
    npu-dies: {kind: device-failure, device: npu, start_s: 30}
    hot-igpu: {kind: slow, device: igpu, factor: 2.5, start_s: 10, end_s: 40}
    squeeze: {kind: kv-shrink, budget_frac: 0.5, start_s: 20}
    oom: {kind: alloc-cap, cap_bytes: 2.0e9, start_s: 0}
    crash: {kind: step-error, at_step: 40}
```

Named events can be swept (``faults.events.npu-dies.start_s`` is an ordinary dotted key).  Every
number is finite and bounded; ``end_s`` (None: to the end of the run) is after ``start_s``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from sim.config.frozen import Frozen

MAX_TIME_S = 1.0e9  # about 30 years of engine clock
MAX_FACTOR = 1000.0
MAX_BYTES = 1.0e15
MAX_EVENTS = 64


def _time(default: float | None = None, *, optional: bool = False):
    if optional:
        return Field(default=default, gt=0, le=MAX_TIME_S, allow_inf_nan=False)
    return Field(default=0.0, ge=0, le=MAX_TIME_S, allow_inf_nan=False)


class _Window(Frozen):
    """Active on [start_s, end_s) of the engine clock; ``end_s`` None: until the run ends."""

    start_s: float = _time()
    end_s: float | None = _time(optional=True)

    @model_validator(mode="after")
    def _ordered(self):
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self

    def active(self, t: float) -> bool:
        return self.start_s <= t and (self.end_s is None or t < self.end_s)


class SlowDevice(_Window):
    """The device's step times are ``factor`` times longer (a step is timed when it starts)."""

    kind: Literal["slow"] = "slow"
    device: str = Field(min_length=1)
    factor: float = Field(ge=1, le=MAX_FACTOR, allow_inf_nan=False)


class DeviceFailure(_Window):
    """The device fails at ``start_s`` (its in-flight steps are lost and re-planned on the devices
    left) and comes back at ``end_s`` (None: never)."""

    kind: Literal["device-failure"] = "device-failure"
    device: str = Field(min_length=1)


class KVShrink(_Window):
    """The device KV budget drops to ``budget_frac`` of the run's budget, or to ``budget_bytes``
    (exactly one), until ``end_s``."""

    kind: Literal["kv-shrink"] = "kv-shrink"
    budget_frac: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    budget_bytes: float | None = Field(default=None, gt=0, le=MAX_BYTES, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.budget_frac is None) == (self.budget_bytes is None):
            raise ValueError("give exactly one of budget_frac and budget_bytes")
        return self

    def budget(self, initial_bytes: float) -> float:
        return initial_bytes * self.budget_frac if self.budget_frac is not None \
            else float(self.budget_bytes)


class AllocCap(_Window):
    """KV allocations that would take the KV bytes allocated past ``cap_bytes`` fail: the request
    whose allocation failed fails (the engine did not plan for it, unlike ``kv-shrink``)."""

    kind: Literal["alloc-cap"] = "alloc-cap"
    cap_bytes: float = Field(gt=0, le=MAX_BYTES, allow_inf_nan=False)


class StepError(Frozen):
    """The ``at_step``-th step the engine starts (prefill and decode counted together, lost steps
    included; ``phase``: only steps of that phase counted) raises as it starts: its requests fail
    and the run goes on."""

    kind: Literal["step-error"] = "step-error"
    at_step: int = Field(ge=1, le=10**9)
    phase: Literal["any", "prefill", "decode"] = "any"


FaultEvent = Annotated[Union[SlowDevice, DeviceFailure, KVShrink, AllocCap, StepError],
                       Field(discriminator="kind")]


class FaultsConfig(Frozen):
    """The faults injected into a run; none by default."""

    events: dict[str, FaultEvent] = Field(default_factory=dict, max_length=MAX_EVENTS)

    @model_validator(mode="before")
    @classmethod
    def _list_to_names(cls, data: Any) -> Any:
        """A list of events is named by position ("0", "1", ...)."""
        if isinstance(data, dict) and isinstance(data.get("events"), list):
            return {**data, "events": {str(i): e for i, e in enumerate(data["events"])}}
        return data

    def __bool__(self) -> bool:
        return bool(self.events)

    def of_kind(self, kind: type) -> list[tuple[str, Any]]:
        """(name, event) of every event of one class, in name order."""
        return [(name, e) for name, e in sorted(self.events.items()) if isinstance(e, kind)]
