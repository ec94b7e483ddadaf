"""Hardware profiles: devices, the memory buses they share, and where every figure comes from.

A profile is a YAML data file (``sim/config/profiles/NAME.yaml`` for the bundled ones, or any
path).  Every numeric figure of a device or a memory bus must be cited in that object's
``sources`` map (same key), so a projection can always be traced back to a datasheet, a
measurement or a derivation.  Every figure is finite and within physical bounds
(docs/simulator-notes.md#limits-and-validation).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from sim.config.frozen import MAX_BYTES, Frozen, user_error
from sim.config.paths import exists
from sim.config.yaml_io import load_yaml
from sim.errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"
# A rate (FLOP/s, bytes/s) below one per second turns a step's work into times that overflow to
# inf (1e-300 FLOP/s); above the maximums is beyond any device made (an H200: ~1e15 FLOP/s dense
# BF16, 4.8e12 B/s).  Test profiles use rates of a few thousand per second.
MIN_RATE = 1.0
MAX_FLOPS_PER_S = 1.0e18
MAX_BYTES_PER_S = 1.0e15
MIN_CAPACITY_BYTES = 1.0
MIN_EFFICIENCY = 1.0e-3  # of a peak: below this the peak figure itself is wrong
MAX_LATENCY_S = 1.0  # per kernel, command or allocation: real ones are microseconds


def _rate(maximum: float, **kw):
    return Field(ge=MIN_RATE, le=maximum, **kw)


def _latency():
    return Field(ge=0, le=MAX_LATENCY_S)


class _Cited(Frozen):
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_figure_cited(self):
        for key, value in self:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if key not in self.sources:
                    raise ValueError(f"figure {key!r} has no entry in 'sources'")
        return self


class MemoryBus(_Cited):
    """One memory system; all devices naming it share its bandwidth while their work overlaps."""

    name: str
    capacity_bytes: float = Field(ge=MIN_CAPACITY_BYTES, le=MAX_BYTES)
    bandwidth_bytes_per_s: float = _rate(MAX_BYTES_PER_S)
    # sustainable fraction of the peak bandwidth
    efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)

    @property
    def usable_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.efficiency


class Device(_Cited):
    """One compute device.  Time of an op alone = max(FLOPs / (peak x efficiency), bytes / min(bus
    usable bandwidth, the device's own ceiling)) + kernels x launch overhead."""

    name: str
    kind: Literal["cpu", "gpu", "npu"]
    memory: str  # name of the MemoryBus it reads from
    # in the precision it runs LLM matmuls at (FP16/BF16)
    peak_flops_per_s: float = _rate(MAX_FLOPS_PER_S)
    compute_efficiency: float = Field(ge=MIN_EFFICIENCY, le=1)
    # e.g. an NPU's DMA
    bandwidth_ceiling_bytes_per_s: float | None = _rate(MAX_BYTES_PER_S, default=None)
    launch_overhead_s: float = _latency()  # per kernel / per op dispatched
    command_latency_s: float = _latency()  # per handoff of work into this device
    alloc_latency_s: float = _latency()  # per buffer allocation
    # first-touch / zeroing rate of a new allocation
    alloc_bytes_per_s: float = _rate(MAX_BYTES_PER_S)


class HardwareProfile(Frozen):
    name: str
    description: str
    memories: tuple[MemoryBus, ...]
    devices: tuple[Device, ...]
    host_memory: str  # the bus that holds offloaded KV blocks

    @model_validator(mode="after")
    def _links(self):
        buses = {m.name for m in self.memories}
        for d in self.devices:
            if d.memory not in buses:
                raise ValueError(f"device {d.name!r} names unknown memory {d.memory!r}")
        if self.host_memory not in buses:
            raise ValueError(f"host_memory names unknown memory {self.host_memory!r}")
        if len({d.name for d in self.devices}) != len(self.devices):
            raise ValueError("device names must be unique")
        if len(buses) != len(self.memories):
            raise ValueError("memory names must be unique")
        return self

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def bus(self, name: str) -> MemoryBus:
        for m in self.memories:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)


def bundled_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A bundled profile name or a path to a profile YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not exists(path):
            raise UserError(f"unknown hardware profile {name_or_path!r} "
                            f"(bundled: {', '.join(bundled_profiles())})")
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # reading it is then the error (``load_yaml``)
        return _load(path)
    return _cached(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _cached(path: Path, mtime_ns: int, size: int) -> HardwareProfile:
    """A profile file as last read (a sweep's points name the same few): read again once the
    file changed.  A frozen profile is safe to share; errors are never kept."""
    return _load(path)


def _load(path: Path) -> HardwareProfile:
    data = load_yaml(path, "hardware profile")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as err:
        raise user_error(err, data, file=str(path)) from None
