"""Scheduling policies beyond the baselines: the paper's GPU-NPU pipeline, AMD's hybrid flow and a
least-finish-time list scheduler."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from policies.scheduling import DeviceLoad, Placement, SchedulingObservation


# -- device lookup -------------------------------------------------------------------------------
def _first_device(obs: SchedulingObservation) -> DeviceLoad:
    if not obs.devices:
        raise ValueError("a scheduling observation needs at least one device")
    return obs.devices[0]


def _find(obs: SchedulingObservation, name: str) -> DeviceLoad | None:
    return next((d for d in obs.devices if d.device == name), None)


def _resolve(obs: SchedulingObservation, name: str, kind: str, default: str | None = None) -> str:
    """``name`` if the observation has it, else its first device of ``kind``, else ``default``,
    else its first device: a policy configured for another machine still names real devices."""
    first = _first_device(obs).device  # raises on an empty observation, whatever is found
    if _find(obs, name) is not None:
        return name
    same_kind = next((d.device for d in obs.devices if d.kind == kind), None)
    if same_kind is not None:
        return same_kind
    return first if default is None else default


def _gpu_and_npu(obs: SchedulingObservation, gpu: str, npu: str) -> tuple[str, str]:
    """The GPU and NPU to use; with no NPU at all the NPU's work stays on the GPU (a one-device
    pipeline) rather than going to whatever device happens to be listed first."""
    gpu_name = _resolve(obs, gpu, "gpu")
    return gpu_name, _resolve(obs, npu, "npu", default=gpu_name)


# -- the paper's pipeline ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PaperScheduling:
    """The paper's GPU-NPU pipeline (sections 3.5 and A.3): PREFILL and ATTENTION on the GPU,
    DECODE/FFN on the NPU, rebalanced from measured load.  When the NPU's busy fraction exceeds
    the GPU's by more than ``imbalance`` the FFN moves to the GPU; when the GPU's exceeds the
    NPU's by more than ``imbalance`` prefill moves to the NPU (a gap of exactly ``imbalance``
    moves nothing).  Attention always stays on the GPU.

    Contract: names only devices in the observation.  A missing ``gpu`` falls back to the first
    device of kind "gpu", then the first device; a missing ``npu`` to the first of kind "npu",
    then to the GPU.  Raises ValueError on an observation without devices."""

    gpu: str = "igpu"
    npu: str = "npu"
    imbalance: float = 0.3  # gap in busy fraction that triggers a move; >= 1 never moves
    kind: Literal["paper"] = "paper"
    observes_load: ClassVar[bool] = True

    def __post_init__(self) -> None:
        # a negative gap would move both ways at equal load; `not >=` also rejects NaN
        if not self.imbalance >= 0:
            raise ValueError(f"imbalance must be >= 0, got {self.imbalance!r}")

    def decide(self, obs: SchedulingObservation) -> Placement:
        gpu, npu = _gpu_and_npu(obs, self.gpu, self.npu)
        gpu_frac = _busy_frac(obs, gpu)
        npu_frac = _busy_frac(obs, npu)
        prefill = npu if gpu_frac - npu_frac > self.imbalance else gpu
        ffn = gpu if npu_frac - gpu_frac > self.imbalance else npu
        return Placement(prefill=prefill, decode_attention=gpu, decode_ffn=ffn)


def _busy_frac(obs: SchedulingObservation, name: str) -> float:
    device = _find(obs, name)
    return 0.0 if device is None else device.busy_frac


# -- AMD's hybrid flow ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AmdHybridScheduling:
    """AMD Ryzen AI software's hybrid flow: prefill on the NPU, the whole decode (attention and
    FFN) on the iGPU, the reverse of the paper's mapping.  Fixed for a run: the placement depends
    only on which devices exist.  Device fallbacks as in ``PaperScheduling``."""

    gpu: str = "igpu"
    npu: str = "npu"
    kind: Literal["amd-hybrid"] = "amd-hybrid"
    observes_load: ClassVar[bool] = False

    def decide(self, obs: SchedulingObservation) -> Placement:
        gpu, npu = _gpu_and_npu(obs, self.gpu, self.npu)
        return Placement(prefill=npu, decode_attention=gpu, decode_ffn=gpu)


# -- least finish time ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LeastFinishTimeScheduling:
    """Greedy earliest-finish-time list scheduling (as in HEFT, Topcuoglu et al. 2002): each op
    goes to the device predicted to finish it first, in the order prefill, decode attention, then
    decode FFN given the attention's device.

        finish(prefill or attention, d) = d.busy_until_s + estimate(op, d)
        finish(ffn, d | attention on a) = max(a.busy_until_s, d.busy_until_s)
                                          + estimate(ffn, d) + (d.handoff_s if d != a else 0)

    The FFN's start waits for the attention's device too, because the engine takes both devices
    of a decode step before it runs; the attention's own time is the same for every d and is left
    out.  One handoff per switch of device, not per layer: the estimates cover whole ops.

    Devices without a finite estimate for an op are skipped for it; with none at all the op goes
    to the first device (the FFN: to the attention's device).  Ties go to the device listed first.
    Raises ValueError on an observation without devices."""

    kind: Literal["least-finish-time"] = "least-finish-time"
    observes_load: ClassVar[bool] = True

    def decide(self, obs: SchedulingObservation) -> Placement:
        first = _first_device(obs)
        prefill = _earliest(obs, "prefill", _ready_s) or first
        attention = _earliest(obs, "decode_attention", _ready_s) or first

        def ffn_ready_s(d: DeviceLoad) -> float:
            handoff_s = 0.0 if d.device == attention.device else d.handoff_s
            return max(attention.busy_until_s, d.busy_until_s) + handoff_s

        ffn = _earliest(obs, "decode_ffn", ffn_ready_s) or attention
        return Placement(prefill.device, attention.device, ffn.device)


def _ready_s(device: DeviceLoad) -> float:
    return device.busy_until_s


def _earliest(
    obs: SchedulingObservation, op: str, ready_s: Callable[[DeviceLoad], float]
) -> DeviceLoad | None:
    """The device with the least ``ready_s(d) + estimate(op, d)``, the first listed on a tie;
    None when no device has a finite estimate for ``op``."""
    best: DeviceLoad | None = None
    best_s = math.inf
    for device in obs.devices:
        seconds = obs.estimate(op, device.device)
        if seconds is None or not math.isfinite(seconds):
            continue
        finish_s = ready_s(device) + seconds
        if best is None or finish_s < best_s:  # strict: a tie keeps the earlier device
            best, best_s = device, finish_s
    return best
