"""Builds and runs one scenario variant under one cost model: model, hardware, KV budget, store,
planner, executor and engine; returns the metrics and what ``--out`` writes."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from policies import DeviceLoad, SchedulingObservation
from sim.attention import AttentionModel
from sim.buffer_pool import BufferPool
from sim.calibrated import CalibratedModel, CalibrationProfile
from sim.config import Scenario
from sim.cost_model import CoefficientModel, RooflineModel
from sim.engine import Engine
from sim.engine_state import RunState
from sim.errors import UserError
from sim.executor import load_backend
from sim.hardware import HardwareProfile, load_profile
from sim.kv_store import PagedKVStore, block_bytes
from sim.metrics import run_metrics
from sim.model_spec import ModelSpec, resolve_model
from sim.planner import Planner
from sim.quality import penalties, quality_metrics
from sim.retier import Retierer
from sim.sim_executor import CostModelExecutor
from sim.workload import Requests, make_requests


@dataclass
class RunOutput:
    variant: str
    cost_model: str | None
    metrics: dict
    state: RunState
    requests: Requests
    store: PagedKVStore | None = None
    executor: object | None = None  # a real executor, for inspection (its tokens)


def _near(value: str, base_dir: Path) -> str:
    """A relative path in a scenario is relative to the scenario file when it exists there."""
    path = Path(value)
    if not path.is_absolute() and (base_dir / path).exists():
        return str(base_dir / path)
    return value


def _models(scn: Scenario, base_dir: Path) -> tuple[ModelSpec, ModelSpec | None]:
    try:
        model = resolve_model(_near(scn.model.spec, base_dir)).with_weight_bits(
            scn.model.weight_bits)
    except UserError as err:
        raise UserError(err.message, field="model.spec") from None
    draft = None
    setup = scn.speculation
    if setup.draft_source == "layer-skip":
        n = setup.draft_layers
        if n is None or n >= model.num_layers:
            raise UserError(f"layer-skip drafting needs 1 <= draft_layers < {model.num_layers}",
                            field="speculation.draft_layers")
        return model, replace(model, name=f"{model.name}[:{n}]", num_layers=n)
    if setup.draft_source == "ngram":
        return model, None
    if scn.model.draft:
        try:
            draft = resolve_model(_near(scn.model.draft, base_dir)).with_weight_bits(
                scn.model.draft_weight_bits)
        except UserError as err:
            raise UserError(err.message, field="model.draft") from None
    if scn.policies.speculation.kind != "off" and draft is None:
        raise UserError(f"speculation policy {scn.policies.speculation.kind!r} needs a draft "
                        "model (or speculation.draft_source: layer-skip or ngram)",
                        field="model.draft")
    return model, draft


def _profile(scn: Scenario, base_dir: Path) -> HardwareProfile:
    try:
        return load_profile(_near(scn.hardware, base_dir) if Path(scn.hardware).suffix
                            else scn.hardware)
    except UserError as err:
        if err.file:
            raise
        raise UserError(err.message, field="hardware") from None


def _check_devices(scn: Scenario, hw: HardwareProfile) -> None:
    names = set(hw.device_names)
    for field in ("device", "prefill", "decode_attention", "decode_ffn", "gpu", "npu"):
        value = getattr(scn.policies.scheduling, field, None)
        if value is not None and value not in names:
            raise UserError(f"unknown device {value!r} on {hw.name} "
                            f"(devices: {', '.join(hw.device_names)})",
                            field=f"policies.scheduling.{field}")
    if scn.speculation.draft_device and scn.speculation.draft_device not in names:
        raise UserError(f"unknown device {scn.speculation.draft_device!r}",
                        field="speculation.draft_device")


def _kv_budgets(scn: Scenario, hw: HardwareProfile, model: ModelSpec,
                draft: ModelSpec | None) -> tuple[float, float]:
    """Device KV budget: explicit, or a fraction of the attention device's memory minus the
    weights; host (offload) budget: explicit, or half the host memory."""
    eng = scn.engine
    idle = SchedulingObservation(tuple(DeviceLoad(d.name, d.kind, 0, 0.0, 0.0)
                                       for d in hw.devices), 0, 0)
    placement = scn.policies.scheduling.decide(idle)  # the initial placement sizes the budget
    bus = hw.bus(hw.device(placement.decode_attention).memory)
    shared = scn.speculation.draft_source == "layer-skip"  # the draft is the target's layers
    weights = model.weight_bytes + (draft.weight_bytes if draft and not shared else 0.0)
    budget = eng.kv_budget_bytes
    if budget is None:
        budget = bus.capacity_bytes * eng.kv_memory_frac - weights
        if budget <= 0:
            raise UserError(f"model too big for the device: {weights / 1e9:.1f} GB of weights, "
                            f"{bus.capacity_bytes * eng.kv_memory_frac / 1e9:.1f} GB usable on "
                            f"{bus.name}", field="model.spec")
    host = eng.host_budget_bytes
    if host is None:
        host = 0.5 * hw.bus(hw.host_memory).capacity_bytes
    return budget, host


def _acceptance_trace(scn: Scenario, base_dir: Path) -> np.ndarray | None:
    """The recorded per-token acceptance outcomes (0/1) the scenario names, if any."""
    name = scn.speculation.acceptance_trace
    if name is None:
        return None
    path = Path(_near(name, base_dir))
    try:
        raw = path.read_text().replace(",", " ").split()
    except OSError as err:
        raise UserError(f"cannot read acceptance trace ({err.strerror})", file=str(path),
                        field="speculation.acceptance_trace") from None
    if not raw or any(x not in ("0", "1") for x in raw):
        raise UserError("expected 0/1 outcomes, one per draft token", file=str(path),
                        field="speculation.acceptance_trace")
    return np.array([x == "1" for x in raw])


def _calibrated(scn: Scenario, model: ModelSpec, draft: ModelSpec | None,
                calibration: CalibrationProfile | None) -> CalibratedModel:
    if calibration is None:
        raise UserError("the calibrated cost model needs a profile: pass --profile FILE "
                        "(written by `infer-os calibrate`)", field="--profile")
    return CalibratedModel(calibration, model, draft=draft,
                           draft_source=scn.speculation.draft_source,
                           speculating=scn.policies.speculation.kind != "off",
                           observing=scn.policies.tiering.observes_blocks)


def check_scenario(scn: Scenario, base_dir: Path) -> None:
    """Everything ``run_scenario`` would reject, without running: models, hardware, devices,
    the KV budget and the workload file.  Raises ``UserError``."""
    model, draft = _models(scn, base_dir)
    hw = _profile(scn, base_dir)
    _check_devices(scn, hw)
    _kv_budgets(scn, hw, model, draft)
    make_requests(scn.workload, scn.seed, base_dir)
    _acceptance_trace(scn, base_dir)


def run_scenario(scn: Scenario, variant: str, cost_model: str | None, base_dir: Path,
                 record_trace: bool = False, on_done=None, backend: str = "sim",
                 calibration: CalibrationProfile | None = None,
                 acceptance_replay: dict[int, list[int]] | None = None) -> RunOutput:
    """One run: simulated under ``cost_model`` (backend ``sim``), or measured on a real
    backend (``cost_model`` None).  ``on_done`` (optional) is called once per request that
    ends.  The ``calibrated`` cost model needs ``calibration`` (a profile from ``infer-os
    calibrate``); ``acceptance_replay`` (per request, the accepted count of each measured
    proposal) replaces drawn acceptance while it lasts."""
    model, draft = _models(scn, base_dir)
    hw = _profile(scn, base_dir)
    _check_devices(scn, hw)
    requests = make_requests(scn.workload, scn.seed, base_dir)
    budget, host = _kv_budgets(scn, hw, model, draft)
    eng = scn.engine
    store = PagedKVStore(eng.block_tokens,
                         block_bytes(model.kv_values_per_token, eng.block_tokens,
                                     eng.kv_quant_group), budget, host, len(requests))
    pool = None
    if backend == "sim":
        cm: CoefficientModel | RooflineModel
        if cost_model == "coefficient":
            assert scn.coefficient is not None  # the scenario validator requires it
            cm = CoefficientModel(scn.coefficient)
        elif cost_model == "calibrated":
            cm = _calibrated(scn, model, draft, calibration)
            store.tail_fp16 = cm.p.layout.kv_tail == "fp16-tokens"
        else:
            cm = RooflineModel(hw, model, draft, scn.speculation.draft_device)
        executor = CostModelExecutor(hw, cm)
    else:
        pool = BufferPool(scn.policies.buffers)  # real KV arena allocations
        executor = load_backend(backend)(scn, hw, requests, store, base_dir, pool)
    attention = getattr(executor, "attention", None) or AttentionModel(scn.attention, scn.seed)
    retierer = Retierer(scn.policies.tiering, attention,
                        penalties(scn.quality), model.kv_values_per_token * eng.block_tokens)
    planner = Planner(scn.policies, model, draft, alpha=scn.speculation.alpha,
                      draft_device=scn.speculation.draft_device, max_draft_len=eng.max_draft_len,
                      tiering_interval_steps=eng.tiering_interval_steps,
                      device_kinds={d.name: d.kind for d in hw.devices}, retierer=retierer,
                      estimator=RooflineModel(hw, model), contiguous_kv=eng.contiguous_kv,
                      acceptance_trace=_acceptance_trace(scn, base_dir))
    planner.draft_source = scn.speculation.draft_source
    planner.acceptance_replay = acceptance_replay
    engine = Engine(planner, requests, executor, store, max_batch=eng.max_batch,
                    max_prefill_tokens=eng.max_prefill_tokens,
                    max_context_tokens=model.max_context_tokens, seed=scn.seed,
                    record_trace=record_trace, on_done=on_done)
    wall0 = time.perf_counter()
    state = engine.run()
    wall_s = time.perf_counter() - wall0
    metrics = run_metrics(state, requests.output_tokens, planner.spec_proposed,
                          planner.spec_accepted, (pool or engine.buffers).stats)
    metrics["quality"] = quality_metrics(retierer.quality_samples, scn.quality.base_ppl)
    metrics["kv_moves"] = dict(sorted(retierer.moves.items()))
    if cost_model == "coefficient":
        metrics["note"] = ("coefficient model: the paper's projection method (baseline rate x "
                           "stated coefficients), not physics")
    if backend != "sim":
        steps_s = getattr(executor, "steps_s", 0.0)
        metrics["measured"] = {
            "device": getattr(executor, "device_label", backend),
            "wall_s": round(wall_s, 6),
            "steps_s": round(steps_s, 6),
            # the engine's own time between measured steps: policies, planning, bookkeeping
            "engine_overhead_s": round(max(wall_s - steps_s, 0.0), 6),
        }
    return RunOutput(variant, cost_model, metrics, state, requests, store,
                     executor if backend != "sim" else None)
