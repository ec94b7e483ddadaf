"""What one run of a scenario variant is built from: models, hardware, the KV budgets, the requests
and the acceptance trace, built and checked once (``RunSetup.build``) and then shared by every
cost model and backend the variant runs under."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from policies import DeviceLoad, SchedulingObservation
from sim.config.hardware import HardwareProfile, load_profile
from sim.config.model_spec import PRESETS, ModelSpec, resolve_model
from sim.config.paths import resolve_path
from sim.config.scenario import Scenario
from sim.config.yaml_io import read_text
from sim.engine.policy_call import ask
from sim.engine.workload import Requests, make_requests
from sim.errors import InfeasibleDecision, UserError


@dataclass(frozen=True)
class RunSetup:
    """Contract: built only by ``build``, which raises ``UserError`` for everything a run would
    reject (models, hardware, devices, the KV budget, the workload and acceptance files); never
    mutated afterwards, so one setup serves any number of runs."""

    scenario: Scenario
    base_dir: Path  # the scenario file's folder: relative paths resolve against it
    model: ModelSpec
    draft: ModelSpec | None
    hardware: HardwareProfile
    requests: Requests
    kv_budget_bytes: float
    host_budget_bytes: float
    acceptance_trace: np.ndarray | None  # recorded 0/1 outcomes per draft token

    @classmethod
    def build(cls, scn: Scenario, base_dir: Path) -> RunSetup:
        model, draft = _models(scn, base_dir)
        hw = _profile(scn, base_dir)
        _check_devices(scn, hw)
        requests = make_requests(scn.workload, scn.seed, base_dir)
        budget, host = _kv_budgets(scn, hw, model, draft)
        return cls(scn, base_dir, model, draft, hw, requests, budget, host,
                   _acceptance_trace(scn, base_dir))


def _spec(value: str, base_dir: Path, field: str) -> ModelSpec:
    """A preset name, or a path by the scenario path rule.  An error in the model's
    ``config.json`` names that file and its key; any other names the scenario's ``field``."""
    try:
        return resolve_model(value if value in PRESETS else str(resolve_path(value, base_dir)))
    except UserError as err:
        if err.file:
            raise
        raise err.at(field=field) from None


def _models(scn: Scenario, base_dir: Path) -> tuple[ModelSpec, ModelSpec | None]:
    model = _spec(scn.model.spec, base_dir, "model.spec").with_weight_bits(scn.model.weight_bits)
    setup = scn.speculation
    if setup.draft_source == "layer-skip":
        n = setup.draft_layers
        if n is None or n >= model.num_layers:
            raise UserError(f"layer-skip drafting needs 1 <= draft_layers < {model.num_layers}",
                            field="speculation.draft_layers")
        return model, replace(model, name=f"{model.name}[:{n}]", num_layers=n)
    if setup.draft_source == "ngram":
        return model, None
    draft = None
    if scn.model.draft:
        draft = _spec(scn.model.draft, base_dir, "model.draft").with_weight_bits(
            scn.model.draft_weight_bits)
    if scn.policies.speculation.kind != "off" and draft is None:
        raise UserError(f"speculation policy {scn.policies.speculation.kind!r} needs a draft "
                        "model (or speculation.draft_source: layer-skip or ngram)",
                        field="model.draft")
    return model, draft


def _profile(scn: Scenario, base_dir: Path) -> HardwareProfile:
    name = scn.hardware
    try:
        return load_profile(str(resolve_path(name, base_dir)) if Path(name).suffix else name)
    except UserError as err:
        if err.file:
            raise
        raise err.at(field="hardware") from None


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
    # the initial placement sizes the budget
    placement = ask(scn.policies.scheduling, "scheduling", idle)
    unknown = [d for d in placement.devices if d not in hw.device_names]
    if unknown:
        raise InfeasibleDecision(f"scheduling policy {scn.policies.scheduling.kind!r} placed "
                                 f"work on unknown device {unknown[0]!r} (devices: "
                                 f"{', '.join(hw.device_names)})")
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
    path = resolve_path(name, base_dir)
    try:
        raw = read_text(path, "acceptance trace").replace(",", " ").split()
    except UserError as err:
        raise err.at(file=str(path), field="speculation.acceptance_trace") from None
    if not raw or any(x not in ("0", "1") for x in raw):
        raise UserError("expected 0/1 outcomes, one per draft token", file=str(path),
                        field="speculation.acceptance_trace")
    return np.array([x == "1" for x in raw])
