"""The seam between the engine and whatever runs a step: the executor protocol and its values.

The cost-model executor (``sim.costs.executor``) answers with predicted durations; a real executor
(``adapters``) does the work, synchronises its device and answers with measured ones.  Executors are
found by name through the ``infer_os.backends`` entry-point group (``sim.run.backends``).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import simpy

from policies import Placement
from sim.errors import UserError


@dataclass(slots=True, kw_only=True)
class StepPlan:
    """One engine step, fully decided, built complete by keyword; never mutated once built (not
    ``frozen`` only because frozen dataclasses are slow to build, and one is built per engine
    step).  Token and byte figures are totals over the batch.

    ``attended_pairs`` sums, over every query token, the resident context tokens it attends to;
    ``kv_read_bytes`` is the device bytes of resident KV read (all layers, at their precisions);
    ``kv_dequant_values`` counts the INT8/INT4/INT2 values among them.  For speculation,
    ``draft_len`` = k > 0: the draft model proposes k tokens per sequence (``draft_*`` fields
    describe its context), then the target verifies k + 1 tokens per sequence in one pass.
    """

    phase: Literal["prefill", "decode"]
    request_ids: Sequence[int] | np.ndarray  # a tuple or a numpy array of ids
    num_tokens: int  # query tokens forwarded through the target
    num_rows: int  # positions whose logits are computed
    attended_pairs: float
    kv_read_bytes: float
    kv_dequant_values: float
    placement: Placement
    draft_len: int = 0
    draft_attended_pairs: float = 0.0
    draft_kv_read_bytes: float = 0.0
    num_allocs: int = 0  # buffer allocations this step (from the buffer policy)
    alloc_bytes: int = 0
    buffer_copy_bytes: int = 0  # live contents moved into reallocated buffers
    enabled: frozenset[str] = frozenset()  # techniques switched on (for the coefficient model)
    tokens_per_seq: float = 1.0  # mean tokens each sequence emits this step (coefficient model)
    kv_copy_bytes: int = 0  # KV moved to or from the host tier by the last re-tiering pass
    kv_requant_values: int = 0  # K/V values it re-quantized
    kv_requant_into: tuple[int, ...] = (0, 0, 0)  # of them, those to INT8, INT4, INT2
    kv_shift_bytes: int = 0  # FP16 bytes a real executor shifts to keep its arena compact
    kv_shift_passes: int = 0  # of its moves, the evictions and offloads (per request and
    # target) and the restores to FP16 (each block), each with a cost of its own besides
    kv_recompute_tokens: int = 0  # tokens whose K/V it recomputes (restored, no copy kept)
    # n-gram drafts: the tokens the step's lookups examined (a real executor reports them; the
    # shadow prices the step it measured with them).  None: every row's whole sequence, as when
    # no n-gram recurs, the most a lookup can cost (what a simulation assumes)
    draft_scan_tokens: float | None = None
    # and of them, the starts whose first token matched (a slice compared; None: 0), and the
    # rows whose lookup found an n-gram (None: none, as for a whole scan)
    draft_compares: float | None = None
    draft_hits: float | None = None
    # per row (for cost models that model padding or one forward per request): prefill, the
    # prompt tokens; decode, the tokens stored before the step.  ``row_block_counts`` [rows,
    # precisions]: each row's blocks by precision (decode only)
    row_tokens: np.ndarray | None = None
    row_block_counts: np.ndarray | None = None


@dataclass(slots=True)
class StepResult:
    """What a step took.  A real executor also reports what only it knows: ``emitted`` tokens
    per sequence (1 + accepted drafts; the engine then uses these instead of drawing
    acceptance), ``proposed`` draft tokens per sequence, and the true KV bytes of its tensors
    after the step (``kv_bytes_by_precision``, ``kv_fp16_equiv_bytes``)."""

    elapsed_s: float
    device_busy_s: dict[str, float] = field(default_factory=dict)
    segments: list[tuple[str, str, float]] = field(default_factory=list)  # (device, op, seconds)
    emitted: np.ndarray | None = None
    proposed: np.ndarray | None = None
    kv_bytes_by_precision: dict[str, int] | None = None
    kv_fp16_equiv_bytes: int = 0
    draft_scan_tokens: int | None = None  # n-gram drafts: the tokens the lookups examined,
    draft_compares: int | None = None  # the slices they compared, the rows that found one
    draft_hits: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str
    kind: str
    memory_bytes: float  # capacity of the memory it reads from
    memory_bus: str
    handoff_s: float = 0.0  # latency of handing work into the device


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an executor does beyond timing steps, declared in one place: the engine and the run
    read nothing else off an executor."""

    measures_acceptance: bool = False  # results carry measured ``emitted`` and ``proposed``
    reports_kv_bytes: bool = False  # results carry the true KV bytes of its tensors
    is_measured: bool = False  # step times are measured on a device (``report()`` says more)


@dataclass(frozen=True, slots=True)
class ExecutorReport:
    """What a measuring executor reports after a run: its device, the sum of its measured step
    times and its speculation counters (per request, the accepted count of each proposal)."""

    device_label: str
    steps_s: float = 0.0
    draft_accepted: int = 0
    draft_rejections: int = 0
    draft_empty: int = 0
    accepted_log: dict[int, list[int]] = field(default_factory=dict)
    proposed_log: dict[int, list[int]] = field(default_factory=dict)  # drafts per proposal


class Executor(Protocol):
    """Contract: ``execute`` is a SimPy generator that takes the step's time on ``env`` (by
    yielding events) and returns its ``StepResult``; it never mutates the plan or engine state.
    ``devices`` lists what placements may name; ``release(request_id)`` is called once when a
    request ends, to free what it holds (a cost model holds nothing).  ``attention``, when not
    None, is the measured attention the tiering policy observes instead of the simulator's
    synthetic model (``sim.quality.attention``).  A real executor reads the KV precision of each
    block from the engine's store when it runs a step (the tiering decisions), so moving blocks
    needs no call of its own."""

    name: str
    capabilities: Capabilities
    attention: Any

    def devices(self) -> tuple[DeviceInfo, ...]: ...

    def execute(self, env: simpy.Environment,
                plan: StepPlan) -> Generator[simpy.Event, Any, StepResult]: ...

    def release(self, request_id: int) -> None: ...

    def report(self) -> ExecutorReport | None: ...


def profile_device(hw, kind: str) -> DeviceInfo:
    """The first device of ``kind`` in hardware profile ``hw`` (``sim.config.hardware``), as a real
    executor that runs on such a device reports it; none is bad input naming ``hardware``."""
    named = [d for d in hw.devices if d.kind == kind]
    if not named:
        raise UserError(f"hardware profile {hw.name} has no {kind} device to run on",
                        field="hardware")
    d = named[0]
    return DeviceInfo(d.name, d.kind, hw.bus(d.memory).capacity_bytes, d.memory, 0.0)
