"""Scheduling family: which device runs which phase or op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """Live load of one device, as the engine measured it."""

    device: str
    kind: str  # "cpu", "gpu" or "npu"
    queue_len: int  # steps waiting for the device
    busy_s: float  # total busy time so far
    busy_frac: float  # busy time / elapsed time, in [0, 1]
    busy_until_s: float = 0.0  # seconds until the device finishes the work it holds (0 = idle)
    handoff_s: float = 0.0  # per step: latency of handing a decode step's op into this device
    #                         (one handoff per layer when attention and FFN are split)


@dataclass(frozen=True, slots=True)
class OpEstimate:
    """Predicted time of one op of the next step on one device, alone (the engine's cost model:
    roofline in the simulator, calibrated for real executors)."""

    op: str  # "prefill", "decode_attention" or "decode_ffn"
    device: str
    seconds: float


@dataclass(frozen=True, slots=True)
class SchedulingObservation:
    devices: tuple[DeviceLoad, ...]
    num_waiting: int  # requests waiting for prefill
    num_running: int  # requests decoding
    estimates: tuple[OpEstimate, ...] = ()

    def estimate(self, op: str, device: str) -> float | None:
        for e in self.estimates:
            if e.op == op and e.device == device:
                return e.seconds
        return None


@dataclass(frozen=True, slots=True)
class Placement:
    """Device name per phase/op: prefill (whole forward pass over the prompt), and within a decode
    step the attention block (QKV, attention, output projection) and the rest (FFN, LM head)."""

    prefill: str
    decode_attention: str
    decode_ffn: str

    @property
    def devices(self) -> frozenset[str]:
        return frozenset((self.prefill, self.decode_attention, self.decode_ffn))


class SchedulingPolicy(Protocol):
    """Contract: every device named in the placement exists (the engine rejects anything else
    loudly).  ``observes_load`` False declares that the placement never depends on the
    observation, which lets the engine decide once instead of every step."""

    kind: str
    observes_load: ClassVar[bool]

    def decide(self, obs: SchedulingObservation) -> Placement: ...


@dataclass(frozen=True, slots=True)
class SinglePlacement:
    """Baseline: everything on one named device."""

    device: str
    kind: Literal["single"] = "single"
    observes_load: ClassVar[bool] = False

    def decide(self, obs: SchedulingObservation) -> Placement:
        return Placement(self.device, self.device, self.device)


@dataclass(frozen=True, slots=True)
class StaticPlacement:
    """A fixed device per phase/op, e.g. the paper's PREFILL/ATTN -> GPU, FFN/DECODE -> NPU."""

    prefill: str
    decode_attention: str
    decode_ffn: str
    kind: Literal["static"] = "static"
    observes_load: ClassVar[bool] = False

    def decide(self, obs: SchedulingObservation) -> Placement:
        return Placement(self.prefill, self.decode_attention, self.decode_ffn)
