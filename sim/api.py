"""The Python API: the one supported way in from notebooks and scripts.  The names in ``__all__``
are stable; everything else in ``sim`` and ``adapters`` may move between versions.

Build a scenario from a file, a bundled name or a dict (policy *objects* welcome wherever a
scenario names a policy), run it under a cost model or on a real backend, and get the metrics
dictionary that ``--json`` prints for a run::

    from sim.api import load_scenario, measure, simulate
    from example_policies.tiering import RecencyTiering

    scn = load_scenario("quickstart", variant="int8-kv")
    mine = scn.with_changes({"policies.tiering": RecencyTiering(recent_blocks=2),
                             "workload.num_requests": 8})
    simulate(mine)["throughput_tok_s"]        # the scenario's first cost model
    simulate(mine, "coefficient")             # another cost model
    measure(mine, backend="torch")            # for real (needs the torch extra)

Errors are the command line's: ``UserError`` (bad input, naming the file and field),
``BackendUnavailable`` (a backend this machine cannot run) and ``PolicyFailure`` (a policy
raised or decided something infeasible; the run's partial metrics are on ``err.metrics``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import scenarios
from sim.config.policy_registry import Listed, catalogue
from sim.config.scenario import Scenario, apply_override, read_yaml, resolve_runs, validate
from sim.costs.calibrated import CalibrationProfile, load_calibration
from sim.errors import BackendUnavailable, PolicyFailure, UserError
from sim.run import output
from sim.run.backends import load_backend
from sim.run.runner import RunOutput, run_scenario

__all__ = ["BackendUnavailable", "PolicyFailure", "Run", "UserError", "build_scenario",
           "list_policies", "load_scenario", "load_variants", "measure", "simulate",
           "simulate_all"]


@dataclass(frozen=True)
class Run:
    """One runnable scenario variant: the validated ``scenario``, the variant's ``name`` and the
    ``file`` it came from (for a dict, ``<dict>`` in the folder given): relative paths (trace
    files, model paths, profiles) resolve against its folder, errors name it."""

    scenario: Scenario
    name: str = "default"
    file: Path = Path("<dict>")

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    def with_changes(self, changes: dict[str, Any]) -> Run:
        """A new, re-validated run with dotted keys set (``{"engine.max_batch": 4}``); a value
        may be a policy object (``{"policies.tiering": RecencyTiering()}``)."""
        data = _plain(self.scenario)
        for key, value in changes.items():
            apply_override(data, key, value)
        return replace(self, scenario=validate(data, str(self.file)))


def _plain(scn: Scenario) -> dict:
    """The scenario as validate() accepts it, policies kept as objects."""
    data = scn.model_dump(exclude={"policies"})
    data["policies"] = {f: getattr(scn.policies, f) for f in type(scn.policies).model_fields}
    return data


def _path(source: str | Path) -> Path:
    path = scenarios.locate(str(source))
    if path is None:
        raise UserError(f"unknown scenario {str(source)!r} (bundled: "
                        f"{', '.join(scenarios.names())}; or a path to a YAML file)")
    return path


def load_variants(source: str | Path, sets: list[str] | tuple[str, ...] = (),
                  only: list[str] | None = None) -> dict[str, Run]:
    """Every variant (or those in ``only``) of a scenario file or bundled name, validated, with
    ``sets`` (``--set`` items, ``"dotted.key=value"``) applied."""
    path = _path(source)
    return {name: Run(scn, name, path) for name, scn in resolve_runs(path, list(sets), only)}


def load_scenario(source: str | Path, variant: str | None = None,
                  sets: list[str] | tuple[str, ...] = ()) -> Run:
    """One variant of a scenario (``variant`` may be omitted when the file has one)."""
    runs = load_variants(source, sets, None if variant is None else [variant])
    if variant is None and len(runs) == 1:
        return next(iter(runs.values()))
    if variant not in runs:
        raise UserError(f"{'unknown variant ' + repr(variant) if variant else 'pass variant='} "
                        f"(variants: {', '.join(runs)})", file=str(_path(source)),
                        field="variant")
    return runs[variant]


def build_scenario(data: dict[str, Any], base_dir: str | Path = ".",
                   name: str = "default") -> Run:
    """A scenario from a dict shaped like the YAML file (no ``variants``; use ``with_changes``
    for those); policy objects may stand where the file has ``{kind: ...}`` mappings."""
    if "variants" in data:
        raise UserError("build_scenario makes one run: drop 'variants' and use "
                        "Run.with_changes for each", field="variants")
    file = Path(base_dir) / "<dict>"
    return Run(validate(copy.copy(data), str(file)), name, file)


def _run(run: Run, cost_model: str | None, backend: str,
         calibration: str | Path | CalibrationProfile | None) -> RunOutput:
    if isinstance(calibration, (str, Path)):
        calibration = load_calibration(Path(calibration))
    if backend != "sim":
        load_backend(backend)  # BackendUnavailable before anything is built
    out = run_scenario(run.scenario, run.name, cost_model, run.base_dir, backend=backend,
                       calibration=calibration)
    if out.error:
        err = PolicyFailure(out.error)
        err.metrics = out.metrics  # type: ignore[attr-defined]
        raise err
    return out


def simulate(run: Run, cost_model: str | None = None,
             calibration: str | Path | CalibrationProfile | None = None) -> dict[str, Any]:
    """The run's metrics under ``cost_model`` (default: the scenario's first); ``calibrated``
    needs ``calibration`` (a profile from ``infer-os calibrate``, or its path)."""
    if calibration is not None and cost_model is None:
        cost_model = "calibrated"
    return _run(run, cost_model or run.scenario.cost_models[0], "sim", calibration).metrics


def measure(run: Run, backend: str = "torch") -> dict[str, Any]:
    """The run's metrics measured on a real backend (``torch``, ``ort``, ...)."""
    if backend == "sim":
        raise UserError("backend 'sim' predicts: use simulate()", field="backend")
    return _run(run, None, backend, None).metrics


def simulate_all(source: str | Path, sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``infer-os simulate SOURCE --json`` as a dict: every variant under every cost model of
    the scenario, with ``speedup_vs_baseline``.  A policy failure is the run's ``error``."""
    path = _path(source)
    runs = [run_scenario(scn, variant, cm, path.parent)
            for variant, scn in resolve_runs(path, list(sets)) for cm in scn.cost_models]
    output.add_speedups(runs)
    return output.document(str(read_yaml(path).get("name", path.stem)), "sim", runs)


def list_policies() -> list[Listed]:
    """Every policy, built-in and plugin: name, family, source package, class, parameters."""
    return catalogue()
