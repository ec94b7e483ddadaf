"""Runs one scenario variant under one cost model or on one backend: from its ``RunSetup``, the KV
store, executor, planner and engine; returns the metrics and what ``--out`` writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sim.config.model_spec import ModelSpec
from sim.config.policy_registry import observes_blocks
from sim.config.scenario import Scenario
from sim.config.seeds import random_stream
from sim.costs.calibrated import CalibratedModel, CalibrationProfile
from sim.costs.cost_model import CoefficientModel, RooflineModel
from sim.costs.executor import CostModelExecutor
from sim.engine.acceptance import Acceptance
from sim.engine.buffer_pool import BufferPool
from sim.engine.engine import Engine
from sim.engine.executor import ExecutorReport
from sim.engine.faults import FaultSchedule
from sim.engine.kv_layout import KV_LAYOUTS, BlockLayout
from sim.engine.kv_store import PagedKVStore, block_bytes
from sim.engine.planner import Planner, PlannerLimits
from sim.engine.retier import Retierer
from sim.engine.state import RunState
from sim.engine.workload import Requests
from sim.errors import UserError
from sim.quality.attention import AttentionModel
from sim.quality.model import penalties, quality_metrics
from sim.run.backends import load_backend
from sim.run.metrics import run_metrics
from sim.run.setup import RunSetup
from sim.run.shadow import ShadowRecorder


@dataclass
class RunOutput:
    variant: str
    cost_model: str | None
    metrics: dict
    state: RunState
    requests: Requests
    store: PagedKVStore | None = None
    executor: object | None = None  # a real executor, for inspection (its tokens)
    report: ExecutorReport | None = None  # what a measuring executor reported
    shadow_steps: list | None = None  # with ``shadow``: each step's plan and measured segments
    shadow_rows: list | None = None  # and the calibrated model's prediction of each (validate)

    @property
    def error(self) -> str | None:
        """Why the run ended early (a policy failed), else None."""
        return self.state.error_message


def calibrated_model(setup: RunSetup, calibration: CalibrationProfile) -> CalibratedModel:
    """The calibrated cost model of ``setup``'s scenario (the shadow's predictor)."""
    return _calibrated(setup.scenario, setup.model, setup.draft, calibration)


def _calibrated(scn: Scenario, model: ModelSpec, draft: ModelSpec | None,
                calibration: CalibrationProfile | None) -> CalibratedModel:
    if calibration is None:
        raise UserError("the calibrated cost model needs a profile: pass --profile FILE "
                        "(written by `infer-os calibrate`)", field="--profile")
    return CalibratedModel(calibration, model, draft=draft,
                           draft_source=scn.speculation.draft_source,
                           speculating=scn.policies.speculation.kind != "off",
                           observing=observes_blocks(scn.policies.tiering))


def check_scenario(scn: Scenario, base_dir: Path, backend: str = "sim") -> RunSetup:
    """Everything ``run_scenario`` would reject, without running: models, hardware, devices,
    the KV budget, the workload file, the devices faults name and (``backend`` not ``sim``)
    settings only the simulator has.  Raises ``UserError``; returns the setup to run with."""
    if backend != "sim" and scn.engine.preemption != "none":
        raise UserError(f"{scn.engine.preemption!r} is simulator-only for now: backend "
                        f"{backend!r} reserves each request's whole KV up front (set it to "
                        "'none', or use `infer-os simulate`)", field="engine.preemption")
    setup = RunSetup.build(scn, base_dir)
    names = setup.hardware.device_names
    for name, event in sorted(scn.faults.events.items()):
        device = getattr(event, "device", None)
        if device is not None and device not in names:
            raise UserError(f"unknown device {device!r} on {setup.hardware.name} (devices: "
                            f"{', '.join(names)})", field=f"faults.events.{name}.device")
    return setup


def _executor(setup: RunSetup, cost_model: str | None, backend: str, store: PagedKVStore,
              calibration: CalibrationProfile | None, faults: FaultSchedule):
    """The cost-model executor (backend ``sim``) or a real backend's, and the buffer pool a real
    backend allocates its KV arenas through (None for a prediction)."""
    scn, hw = setup.scenario, setup.hardware
    if backend != "sim":
        pool = BufferPool(scn.policies.buffers)  # real KV arena allocations
        return load_backend(backend)(scn, hw, setup.requests, store, setup.base_dir, pool), pool
    cm: CoefficientModel | RooflineModel | CalibratedModel
    if cost_model == "coefficient":
        assert scn.coefficient is not None  # the scenario validator requires it
        cm = CoefficientModel(scn.coefficient)
    elif cost_model == "calibrated":
        cm = _calibrated(scn, setup.model, setup.draft, calibration)
    else:
        cm = RooflineModel(hw, setup.model, setup.draft, scn.speculation.draft_device)
    return CostModelExecutor(hw, cm, faults.slow_factor if faults.slow else None), None


def _kv_layout(cost_model: str | None, calibration: CalibrationProfile | None):
    """A calibrated prediction counts KV as the executor it was calibrated on lays it out."""
    if cost_model == "calibrated" and calibration is not None:
        return KV_LAYOUTS[calibration.layout.kv_tail]
    return BlockLayout


@dataclass
class Assembly:
    """The parts of one run, wired: what ``run_scenario`` runs and ``infer-os serve`` serves."""

    engine: Engine
    planner: Planner
    store: PagedKVStore
    executor: object
    pool: BufferPool | None  # a real backend's KV arena allocations (None for a prediction)
    retierer: Retierer


def assemble(setup: RunSetup, requests: Requests, *, cost_model: str | None = None,
             backend: str = "sim", calibration: CalibrationProfile | None = None,
             acceptance_replay: dict[int, list[int]] | None = None, record_trace=False,
             on_done=None, make_executor=None, wrap_executor=None, engine_cls=Engine,
             **engine_kw) -> Assembly:
    """KV store, executor, planner and engine for ``requests`` (``setup.requests`` for a
    scripted run; a server's live request slots).  ``make_executor(store, pool)`` replaces the
    backend's factory, ``wrap_executor(executor)`` wraps what it made; ``engine_cls`` and
    ``engine_kw`` replace the engine (the server's real-time one)."""
    scn, model, eng = setup.scenario, setup.model, setup.scenario.engine
    store = PagedKVStore(eng.block_tokens,
                         block_bytes(model.kv_values_per_token, eng.block_tokens,
                                     eng.kv_quant_group),
                         setup.kv_budget_bytes, setup.host_budget_bytes, len(requests),
                         layout=_kv_layout(cost_model, calibration))
    faults = FaultSchedule(scn.faults)
    if make_executor is not None:
        pool = BufferPool(scn.policies.buffers)
        executor = make_executor(store, pool)
    else:
        executor, pool = _executor(setup, cost_model, backend, store, calibration, faults)
    if wrap_executor is not None:
        executor = wrap_executor(executor)
    caps = executor.capabilities
    attention = executor.attention or AttentionModel(scn.attention, scn.seed)
    retierer = Retierer(scn.policies.tiering, attention,
                        penalties(scn.quality), model.kv_values_per_token * eng.block_tokens)
    spec = scn.speculation
    limits = PlannerLimits(eng.max_draft_len, eng.tiering_interval_steps, spec.draft_device,
                           spec.draft_source, eng.contiguous_kv)
    acceptance = Acceptance(spec.alpha, random_stream(scn.seed, "acceptance"),
                            setup.acceptance_trace, acceptance_replay, caps.measures_acceptance)
    planner = Planner(scn.policies, model, setup.draft, limits=limits, retierer=retierer,
                      acceptance=acceptance, estimator=RooflineModel(setup.hardware, model))
    kw = dict(max_batch=eng.max_batch, max_prefill_tokens=eng.max_prefill_tokens,
              max_context_tokens=model.max_context_tokens, record_trace=record_trace,
              on_done=on_done, max_waiting=eng.max_waiting, faults=faults or None,
              preemption=eng.preemption) | engine_kw
    engine = engine_cls(planner, requests, executor, store, **kw)
    return Assembly(engine, planner, store, executor, pool, retierer)


def run_scenario(scn: Scenario, variant: str, cost_model: str | None, base_dir: Path,
                 record_trace: bool = False, on_done=None, backend: str = "sim",
                 calibration: CalibrationProfile | None = None,
                 acceptance_replay: dict[int, list[int]] | None = None,
                 setup: RunSetup | None = None, shadow: bool = False) -> RunOutput:
    """One run: simulated under ``cost_model`` (backend ``sim``), or measured on a real
    backend (``cost_model`` None).  ``on_done`` (optional) is called once per request that
    ends.  The ``calibrated`` cost model needs ``calibration`` (a profile from ``infer-os
    calibrate``); ``acceptance_replay`` (per request, the accepted count of each measured
    proposal) replaces drawn acceptance while it lasts.  ``setup``: the variant's setup from
    ``check_scenario`` (built here when not given); ``shadow``: keep every measured step's plan
    (``sim.run.shadow``), for the cost model to predict afterwards."""
    setup = setup or check_scenario(scn, base_dir, backend)
    if setup.scenario is not scn:
        raise ValueError("run_scenario: the setup was built from another scenario")
    requests, eng = setup.requests, scn.engine
    built = assemble(setup, requests, cost_model=cost_model, backend=backend,
                     calibration=calibration, acceptance_replay=acceptance_replay,
                     record_trace=record_trace, on_done=on_done,
                     wrap_executor=ShadowRecorder if shadow and backend != "sim" else None)
    engine, planner, pool, retierer = built.engine, built.planner, built.pool, built.retierer
    executor, store, caps = built.executor, built.store, built.executor.capabilities
    wall0 = time.perf_counter()
    state = engine.run()
    wall_s = time.perf_counter() - wall0
    metrics = run_metrics(state, requests.output_tokens, planner.signals.num_proposed,
                          planner.signals.num_accepted, (pool or engine.buffers).stats,
                          num_rejected=engine.num_rejected)
    if engine.faults is not None:
        metrics["faults"] = dict(engine.faults.counts)
    if engine.preempt is not None:  # (absent without preemption: outputs stay as they were)
        metrics["num_preemptions"] = engine.preempt.counts["num_preemptions"]
        metrics["preemption"] = {"mode": eng.preemption, **engine.preempt.counts}
    metrics["quality"] = quality_metrics(retierer.quality_samples, scn.quality.base_ppl)
    metrics["kv_moves"] = dict(sorted(retierer.moves.items()))
    if cost_model == "coefficient":
        metrics["note"] = ("coefficient model: the paper's projection method (baseline rate x "
                           "stated coefficients), not physics")
    report = executor.report()
    if report is not None:
        metrics["measured"] = {
            "device": report.device_label,
            "wall_s": round(wall_s, 6),
            "steps_s": round(report.steps_s, 6),
            # the engine's own time between measured steps: policies, planning, bookkeeping
            "engine_overhead_s": round(max(wall_s - report.steps_s, 0.0), 6),
        }
    return RunOutput(variant, cost_model, metrics, state, requests, store,
                     executor if caps.is_measured else None, report,
                     executor.steps if isinstance(executor, ShadowRecorder) else None)
