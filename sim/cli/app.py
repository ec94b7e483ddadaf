"""The ``infer-os`` command line (docs/architecture.md#the-json-contract)."""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

import scenarios
from sim.cli import sweep as sweep_cli
from sim.cli.interrupts import STOPPED, exit_status, sigterm_raises
from sim.config.hardware import bundled_profiles
from sim.config.model_spec import PRESETS
from sim.config.policy_check import FAMILY_NAMES
from sim.config.policy_registry import BUILTIN_SOURCE, catalogue
from sim.config.scenario import read_yaml, resolve_runs
from sim.costs.calibrated import load_calibration
from sim.errors import BackendUnavailable, PolicyFailure, UserError
from sim.run import output
from sim.run.backends import backend_names, load_backend
from sim.run.runner import check_scenario, run_scenario

PROGRESS_AFTER_S = 0.5  # show a progress bar only for runs longer than this


def _scenario_path(name: str) -> Path:
    path = scenarios.locate(name)
    if path is None:
        raise UserError(f"unknown scenario {name!r} (bundled: {', '.join(scenarios.names())}; "
                        "or a path to a YAML file)", field="SCENARIO")
    return path


def cmd_list(args: argparse.Namespace) -> int:
    out = Console(width=None if sys.stdout.isatty() else 150)
    out.print("[bold]scenarios[/bold]")
    for name in scenarios.names():
        desc = read_yaml(_scenario_path(name)).get("description", "")
        out.print(f"  {name:<22} {desc}", markup=False)
    _list_policies(out)
    out.print("[bold]sweeps[/bold]")
    for name in sweep_cli.sweep_names():
        desc = read_yaml(sweep_cli.locate(name)).get("description", "")
        out.print(f"  {name:<22} {desc}", markup=False)
    out.print(f"[bold]backends[/bold]\n  {', '.join(backend_names())}")
    out.print(f"[bold]hardware profiles[/bold]\n  {', '.join(bundled_profiles())}")
    out.print(f"[bold]models[/bold]\n  {', '.join(PRESETS)}")
    return 0


def _list_policies(out: Console) -> None:
    """Every policy by family: name, parameters (type = default) and, for a plugin, the
    package it comes from; a plugin that cannot be used is listed with the reason."""
    listed = catalogue()
    out.print("[bold]policies[/bold] (kind: parameters; plugins with their package; "
              "write your own: docs/policies.md)")
    for family in FAMILY_NAMES:
        out.print(f"  {family}")
        for p in (p for p in listed if p.family == family):
            params = ", ".join(f"{n}: {t} = {d!r}" if d is not ... else f"{n}: {t}"
                               for n, t, d in p.parameters)
            out.print(f"    {p.name:<18} {params or '-'}", markup=False)
            if p.source != BUILTIN_SOURCE:
                out.print(f"    {'':<18} from {p.source} ({p.target})", markup=False)
    for p in (p for p in listed if p.family is None and not p.error):
        out.print(f"  any family (the scenario key decides): {p.name} [{p.source}: {p.target}]",
                  markup=False)
    for p in (p for p in listed if p.error):
        out.print(f"  unusable: {p.name} [{p.source}: {p.target}]: {p.error}", markup=False)


class _Progress:
    """A progress bar on a terminal's stderr that appears only once a run has lasted a moment
    (none on a file or pipe: a transient bar would leave an empty line there)."""

    def __init__(self, total_requests: int, label: str = "simulating"):
        self.total, self.done, self.t0 = total_requests, 0, time.monotonic()
        self.label = label
        self.bar: Progress | None = None
        self.console = Console(stderr=True)

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if (self.bar is None and self.console.is_terminal
                and time.monotonic() - self.t0 > PROGRESS_AFTER_S):
            self.bar = Progress(TextColumn(self.label), BarColumn(),
                                TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total, completed=self.done)
        elif self.bar is not None and self.done % 64 == 0:
            self.bar.update(self.task, completed=self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None  # drawn again if the work goes on


def cmd_simulate(args: argparse.Namespace) -> int:
    return _run(args, "sim")


def cmd_measure(args: argparse.Namespace) -> int:
    backend = args.backend
    if backend == "sim":
        raise UserError("backend 'sim' predicts, it does not measure: use `infer-os simulate`",
                        field="--backend")
    load_backend(backend)  # an unknown backend is exit 2 before anything runs
    return _run(args, backend)


def cmd_validate(args: argparse.Namespace) -> int:
    """Simulate and measure every variant on identical requests; report the errors
    (``sim.cli.validate``)."""
    from types import SimpleNamespace

    from sim.cli.validate import cmd_validate as validate

    return validate(args, SimpleNamespace(
        resolve=_resolve, prepare_out=_prepare_out, progress=_Progress,
        interrupted=_interrupted, discard=_discard, trace_sink=output.trace_sink))


def cmd_report(args: argparse.Namespace) -> int:
    """Write DIR/report.html (plots from a ``--out`` folder) and print its path; what is
    damaged or missing in the folder, or an interrupted run's folder, is said on stderr."""
    from sim.report.render import write_report

    notes: list[str] = []
    print(write_report(Path(args.dir), notes))
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in notes:
        err.print(f"infer-os: note: {line}", markup=False)
    return 0


def _resolve(args: argparse.Namespace):
    """The scenario path, its name, its (variant, scenario) runs and each variant's
    ``RunSetup``, checked before anything runs; ``--variant`` selects some."""
    path = _scenario_path(args.scenario)
    runs_cfg = resolve_runs(path, args.set or [], args.variant)
    setups, errors = {}, {}
    for variant, scn in runs_cfg:  # reject bad input before anything runs; built once
        try:
            setups[variant] = check_scenario(scn, path.parent, getattr(args, "backend", "sim"))
        except UserError as e:
            errors[variant] = e
    if errors:
        variant, e = next(iter(errors.items()))
        if e.file:
            raise e
        # an error every variant has is the base file's (or a --set's): blamed plainly
        shared = len(errors) == len(runs_cfg) and len({str(x) for x in errors.values()}) == 1
        where = "" if variant == "default" or shared else f"variants.{variant} -> "
        raise e.at(file=str(path), field=where + (e.field or ""))
    return path, runs_cfg[0][1].name, runs_cfg, setups


def _run(args: argparse.Namespace, backend: str) -> int:
    path, name, runs_cfg, setups = _resolve(args)
    profile_path = getattr(args, "profile", None)
    profile = load_calibration(Path(profile_path)) if profile_path else None
    if backend == "sim" and profile is not None:  # --profile: the calibrated model alone
        jobs = [(v, s, "calibrated") for v, s in runs_cfg]
    elif backend == "sim":
        jobs = [(v, s, cm) for v, s in runs_cfg for cm in s.cost_models]
    else:  # measured once per variant: cost models predict, they are not measured
        jobs = [(v, s, None) for v, s in runs_cfg]
    out_dir = _prepare_out(args, "results.json")
    progress = _Progress(sum(s.workload.num_requests for _, s, _ in jobs),
                         "simulating" if backend == "sim" else f"measuring ({backend})")
    runs, sinks = [], []
    try:
        try:
            for variant, scn, cm in jobs:
                sinks.append(output.trace_sink(out_dir, variant, cm))
                runs.append(run_scenario(scn, variant, cm, path.parent, record_trace=sinks[-1],
                                         on_done=progress, backend=backend,
                                         calibration=profile, setup=setups[variant]))
        except STOPPED as stop:
            progress.close()
            output.add_speedups(runs)
            doc = output.incomplete(output.document(name, backend, runs), len(runs), len(jobs))
            return _interrupted(stop, out_dir, doc, runs, "results.json")
        finally:
            progress.close()
        output.add_speedups(runs)
        doc = output.document(name, backend, runs)
        _print_runs(args, backend, name, doc, runs)
        if out_dir is not None:
            output.write_out(out_dir, doc, runs)
            if not args.json:
                Console(stderr=True).print(f"wrote results, per-request CSVs, Chrome traces and "
                                           f"KV timelines to {out_dir} (`infer-os report` draws "
                                           "them)")
    finally:
        _discard(sinks)
    return output.report_failures(runs, Console(stderr=True, highlight=False, soft_wrap=True))


def _print_runs(args: argparse.Namespace, backend: str, name: str, doc: dict, runs) -> None:
    """The document on stdout (``--json``), else the table (and the measuring device)."""
    if args.json:
        sys.stdout.write(output.dumps(doc) + "\n")
        return
    output.print_table(name, runs, Console(width=None if sys.stdout.isatty() else 150),
                       "simulate" if backend == "sim" else f"measure --backend {backend}")
    if backend != "sim":
        devices = sorted({r.metrics["measured"]["device"] for r in runs})
        Console(stderr=True).print(f"measured on {', '.join(devices)}", markup=False)


def _prepare_out(args: argparse.Namespace, marker: str) -> Path | None:
    """``--out`` checked before anything runs (exit 2 when it cannot be written)."""
    if args.out is None:
        return None
    output.prepare_out(Path(args.out), marker)
    return Path(args.out)


def _interrupted(stop: BaseException, out_dir: Path | None, doc: dict, runs: list,
                 marker: str) -> int:
    """Ctrl-C or SIGTERM during the runs: the finished runs written (marked incomplete), one
    line on stderr; the run that was going on is dropped."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if out_dir is None:
        err.print("infer-os: interrupted", markup=False)
    else:
        output.write_out(out_dir, doc, runs, marker)
        err.print(f"infer-os: interrupted: wrote {len(runs)} of "
                  f"{doc['incomplete']['runs_planned']} runs to {out_dir}", markup=False)
    return exit_status(stop)


def _discard(sinks: list) -> None:
    """Remove what the sinks of runs not written left (temporary files)."""
    for sink in sinks:
        if sink:
            sink.discard()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer-os", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="scenarios, policies, backends, hardware profiles, models")
    p.set_defaults(func=cmd_list)
    p = _scenario_command(sub, "simulate", "run a scenario through the cost-model simulator",
                          "write JSON, per-request CSVs and Chrome traces", cmd_simulate)
    p.add_argument("--profile", metavar="PROFILE.yaml", help="predict with the calibrated cost "
                   "model of this profile (from `infer-os calibrate`) instead of the scenario's")
    p = _scenario_command(sub, "measure", "run a scenario for real on a backend (e.g. torch)",
                          "write JSON, per-request CSVs and Chrome traces", cmd_measure)
    p.add_argument("--backend", required=True, help="an installed backend (infer-os list)")
    p = _scenario_command(sub, "validate", "simulate and measure on identical requests: the "
                          "errors", "write validation.json and both runs' CSVs, traces and KV "
                          "timelines", cmd_validate, optional_scenario=True)
    p.add_argument("--backend", help="a real backend (infer-os list)")
    p.add_argument("--trace", metavar="DIR", help="instead of SCENARIO: predict the traffic "
                   "`infer-os serve --record DIR` recorded and compare with what it measured")
    p.add_argument("--cost-model", choices=["calibrated", "roofline", "coefficient"],
                   default=None, help="the prediction's cost model (default: calibrated)")
    p.add_argument("--profile", metavar="PROFILE.yaml",
                   help="calibration profile for the calibrated model (default: the cached one "
                   "for this machine, calibrating first when there is none)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="measure each variant N times, interleaved; errors against the "
                   "measured median, flagged noise or model by the measured spread (1-20)")
    p.add_argument("--speed-check", dest="speed_check", action="store_true", default=False,
                   help="re-time reference steps of the calibration around each measured run "
                   "and scale the prediction by the machine's speed then (off by default: on a "
                   "machine whose speed jitters by more than it drifts, the factor adds noise)")
    p.add_argument("--no-speed-check", dest="speed_check", action="store_false",
                   help="the default (kept for scripts)")
    p = sub.add_parser("report", help="an HTML page with plots from a results folder")
    p.add_argument("dir", metavar="DIR",
                   help="a folder written by simulate|measure|validate|sweep --out")
    p.set_defaults(func=cmd_report)
    sweep_cli.add_parser(sub)
    for ep in entry_points(group="infer_os.commands"):  # e.g. generate, from adapters (no torch)
        ep.load()(sub)
    return parser


def _scenario_command(sub, name: str, help_text: str, out_help: str, func,
                      optional_scenario: bool = False):
    """A subcommand over a scenario's variants: SCENARIO, --set, --variant, --json, --out."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("scenario", help="a bundled scenario name or a path to a YAML file",
                   nargs="?" if optional_scenario else None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a dotted key (value parsed as YAML); repeatable")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="run only this variant (repeatable; default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.set_defaults(func=func)
    return p


# SIGTERM: exit 143 (a command from an entry point opts in with stop_on_sigterm=True)
RUN_COMMANDS = (cmd_simulate, cmd_measure, cmd_validate, cmd_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.func in RUN_COMMANDS or getattr(args, "stop_on_sigterm", False):
            with sigterm_raises():
                return args.func(args)
        return args.func(args)
    except (UserError, BackendUnavailable) as e:
        for line in getattr(e, "lines", None) or (str(e),):  # several errors: a line each
            err.print(f"infer-os: error: {line}", markup=False)
        return e.exit_code
    except PolicyFailure as e:  # before any run started (e.g. the initial placement)
        err.print(f"infer-os: error: {e}", markup=False)
        return 1
    except STOPPED as stop:  # anywhere else (a command's runs write what finished first)
        err.print("infer-os: interrupted", markup=False)
        return exit_status(stop)
