"""Cost models: a step plan -> the work it puts on each device.

- ``roofline``: per op group, time = max(FLOPs / (peak x efficiency), bytes / bandwidth) + kernels
  x launch overhead, plus the command latency of each device the step hands work into.
- ``coefficient``: the source paper's projection method: a baseline rate times one coefficient per
  enabled technique.  It is not physics: it ignores batch size, context length and the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config.hardware import HardwareProfile
from sim.config.model_spec import ModelSpec
from sim.config.scenario import CoefficientConfig
from sim.costs.work import Work, attention_shape, attention_work, ffn_work, head_work
from sim.engine.executor import StepPlan

REST_CACHE_LEN = 4096  # (tokens, rows) pairs whose FFN + head work a roofline model keeps


@dataclass(slots=True)
class Segment:
    """A stretch of a step on one device: roofline time of its FLOPs/bytes, plus fixed time."""

    device: str
    op: str
    bytes: float
    variable_s: float  # max(compute, memory) time when alone on the bus
    fixed_s: float  # launch overheads and handoff latency


@dataclass(frozen=True, slots=True)
class _Rates:
    """One device's roofline figures, looked up once per cost model."""

    flops_per_s: float  # peak x compute efficiency
    bytes_per_s: float  # its bus's usable bandwidth, capped by the device's own ceiling
    launch_s: float  # per kernel
    command_s: float  # per handoff into the device
    alloc_s: float  # per allocation
    alloc_bytes_per_s: float

    @classmethod
    def of(cls, hw: HardwareProfile, d) -> _Rates:
        bus = hw.bus(d.memory)
        return cls(d.peak_flops_per_s * d.compute_efficiency,
                   min(bus.usable_bytes_per_s, d.bandwidth_ceiling_bytes_per_s or float("inf")),
                   d.launch_overhead_s, d.command_latency_s, d.alloc_latency_s,
                   d.alloc_bytes_per_s)


class RooflineModel:
    name = "roofline"

    def __init__(self, hw: HardwareProfile, model: ModelSpec, draft: ModelSpec | None = None,
                 draft_device: str | None = None):
        self.hw, self.model, self.draft, self.draft_device = hw, model, draft, draft_device
        self._rates = {d.name: _Rates.of(hw, d) for d in hw.devices}
        self._attention = attention_shape(model)
        self._rest: dict[tuple[int, int], Work] = {}  # (tokens, rows) -> FFN + head work

    def op_seconds(self, op: str, device: str, num_tokens: int, attended_pairs: float,
                   kv_read_bytes: float) -> float:
        """Alone time of one op group on one device (for the scheduling policy's estimates):
        ``prefill`` (a whole forward pass), ``decode_attention`` or ``decode_ffn``."""
        spec = self.model
        attn = attention_work(spec, num_tokens, attended_pairs, kv_read_bytes, 0)
        rows = num_tokens if op != "prefill" else 1
        rest = ffn_work(spec, num_tokens) + head_work(spec, rows)
        work = attn + rest if op == "prefill" else attn if op == "decode_attention" else rest
        seg = self._segment(device, op, work, handoff=True)
        return seg.variable_s + seg.fixed_s

    def _segment(self, device: str, op: str, work: Work, handoff: bool) -> Segment:
        r = self._rates[device]
        compute_s = work.flops / r.flops_per_s
        fixed = work.kernels * r.launch_s + (r.command_s if handoff else 0.0)
        return Segment(device, op, work.bytes, max(compute_s, work.bytes / r.bytes_per_s), fixed)

    def segments(self, plan: StepPlan) -> list[Segment]:
        p, spec = plan.placement, self.model
        key = (plan.num_tokens, plan.num_rows)
        rest = self._rest.get(key)
        if rest is None:
            if len(self._rest) >= REST_CACHE_LEN:  # (prefills: as many keys as prompt sums)
                self._rest.clear()
            rest = self._rest[key] = ffn_work(spec, plan.num_tokens) + head_work(spec,
                                                                                 plan.num_rows)
        attn = (plan.num_tokens, plan.attended_pairs, plan.kv_read_bytes, plan.kv_dequant_values)
        out = []
        if plan.draft_len > 0 and self.draft is not None:  # prompt lookup drafts for free
            out.extend(self._draft_segments(plan))
        if plan.phase == "prefill" or p.decode_attention == p.decode_ffn:
            device = p.prefill if plan.phase == "prefill" else p.decode_attention
            out.append(self._segment(device, plan.phase, self._attention.work(*attn, rest),
                                     handoff=True))
        else:
            # attention and FFN alternate devices every layer: 2 handoffs per layer
            out.append(self._segment(p.decode_attention, "attention",
                                     self._attention.work(*attn), handoff=False))
            out.append(self._segment(p.decode_ffn, "ffn", rest, handoff=False))
            lat = self.hw.device(p.decode_attention).command_latency_s
            lat += self.hw.device(p.decode_ffn).command_latency_s
            out.append(Segment(p.decode_ffn, "handoff", 0.0, 0.0, lat * spec.num_layers))
        if plan.kv_copy_bytes or plan.kv_requant_values or plan.kv_recompute_tokens:
            out.append(self._retier_segment(plan))
        if plan.num_allocs:
            device = out[-1].device
            r = self._rates[device]
            alloc_s = plan.num_allocs * r.alloc_s + plan.alloc_bytes / r.alloc_bytes_per_s
            moved = 2.0 * plan.buffer_copy_bytes  # read + write of the moved contents
            out.append(Segment(device, "alloc", moved, max(0.0, moved / r.bytes_per_s), alloc_s))
        return out

    def _retier_segment(self, plan: StepPlan) -> Segment:
        """Re-quantizing (read FP16, write ~1 byte/value), host copies, and recomputing K/V of
        restored blocks (a forward pass over their tokens), on the attention device."""
        device = plan.placement.decode_attention
        d = self.hw.device(device)
        spec = self.model
        work = Work(4.0 * plan.kv_requant_values + 2.0 * spec.num_params * plan.kv_recompute_tokens,
                    3.0 * plan.kv_requant_values + (spec.weight_bytes if plan.kv_recompute_tokens
                                                    else 0.0), 0)
        seg = self._segment(device, "retier", work, handoff=False)
        host = self.hw.bus(self.hw.host_memory)
        if host.name == d.memory:  # the host tier shares the device's memory: read + write it
            seg.bytes += 2 * plan.kv_copy_bytes
            seg.variable_s += 2 * plan.kv_copy_bytes / host.usable_bytes_per_s
        else:  # over the host link, e.g. PCIe
            seg.fixed_s += plan.kv_copy_bytes / host.usable_bytes_per_s
        return seg

    def _draft_segments(self, plan: StepPlan) -> list[Segment]:
        """k sequential single-token decode passes of the draft model over the batch."""
        draft, k = self.draft, plan.draft_len
        assert draft is not None, "a drafting plan needs a draft model"
        batch = len(plan.request_ids)
        device = self.draft_device or plan.placement.decode_ffn
        one = (attention_work(draft, batch, plan.draft_attended_pairs, plan.draft_kv_read_bytes, 0)
               + ffn_work(draft, batch) + head_work(draft, batch))
        seg = self._segment(device, "draft", one, handoff=True)
        return [Segment(device, "draft", seg.bytes * k, seg.variable_s * k, seg.fixed_s * k)]


class CoefficientModel:
    """time per decode step = tokens each sequence emits / (baseline rate x product of enabled
    coefficients); prefill likewise from the baseline prefill rate.  Device: the step's first."""

    name = "coefficient"

    def __init__(self, cfg: CoefficientConfig):
        self.cfg = cfg

    def speedup(self, enabled: frozenset[str]) -> float:
        out = 1.0
        for technique, coef in self.cfg.techniques.items():
            if technique in enabled:
                out *= coef.value
        return out

    def segments(self, plan: StepPlan) -> list[Segment]:
        factor = self.speedup(plan.enabled)
        if plan.phase == "prefill":
            device = plan.placement.prefill
            seconds = plan.num_tokens / (self.cfg.baseline_prefill_tok_s.value * factor)
        else:
            device = plan.placement.decode_ffn
            seconds = plan.tokens_per_seq / (self.cfg.baseline_decode_tok_s.value * factor)
        return [Segment(device, plan.phase, 0.0, 0.0, seconds)]
