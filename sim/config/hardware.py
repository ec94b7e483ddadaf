"""Hardware profiles: devices, the memory buses they share, and where every figure comes from.

A profile is a YAML data file (``sim/config/profiles/NAME.yaml`` for the bundled ones, or any
path).  Every numeric figure of a device or a memory bus must be cited in that object's
``sources`` map (same key), so a projection can always be traced back to a datasheet, a
measurement or a derivation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from sim.config.frozen import Frozen
from sim.errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"


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
    capacity_bytes: float = Field(gt=0)
    bandwidth_bytes_per_s: float = Field(gt=0)
    efficiency: float = Field(gt=0, le=1)  # sustainable fraction of the peak bandwidth

    @property
    def usable_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.efficiency


class Device(_Cited):
    """One compute device.  Time of an op alone = max(FLOPs / (peak x efficiency), bytes / min(bus
    usable bandwidth, the device's own ceiling)) + kernels x launch overhead."""

    name: str
    kind: Literal["cpu", "gpu", "npu"]
    memory: str  # name of the MemoryBus it reads from
    peak_flops_per_s: float = Field(gt=0)  # in the precision it runs LLM matmuls at (FP16/BF16)
    compute_efficiency: float = Field(gt=0, le=1)
    bandwidth_ceiling_bytes_per_s: float | None = Field(default=None, gt=0)  # e.g. an NPU's DMA
    launch_overhead_s: float = Field(ge=0)  # per kernel / per op dispatched
    command_latency_s: float = Field(ge=0)  # per handoff of work into this device
    alloc_latency_s: float = Field(ge=0)  # per buffer allocation
    alloc_bytes_per_s: float = Field(gt=0)  # first-touch / zeroing rate of a new allocation


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
        if not path.exists():
            raise UserError(f"unknown hardware profile {name_or_path!r} "
                            f"(bundled: {', '.join(bundled_profiles())})")
    try:
        data = yaml.safe_load(path.read_text())
        return HardwareProfile.model_validate(data)
    except OSError as err:
        raise UserError(f"cannot read hardware profile ({err.strerror})", file=str(path)) from None
    except yaml.YAMLError as err:
        raise UserError(f"invalid YAML ({err})".replace("\n", " "), file=str(path)) from None
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"])
        raise UserError(e["msg"], file=str(path), field=field) from None
