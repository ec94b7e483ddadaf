"""``infer-os serve``: a scenario variant's model and policies behind an OpenAI-compatible API.

    infer-os serve SCENARIO --backend torch|ort [--variant V] [--set KEY=VALUE]...
                   [--host 127.0.0.1] [--port 8000] [--max-waiting N]
                   [--record DIR [--record-text]] [--served-model-name NAME]
                   [--drain-timeout S] [--seed N]

Prints one line with the address once it listens (``--port 0``: a free port, printed).  SIGINT
or SIGTERM: stop admitting (503), let requests in flight finish for up to ``--drain-timeout``
seconds, fail the rest with a reason, write the recording, exit 0 (1 when a policy failure
stopped the engine; 2 for bad input before it started).  Needs ``pip install 'infer-os[serve]'``.
This module imports the server's libraries only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.errors import BackendUnavailable, UserError

DEFAULT_MAX_WAITING = 64  # when the scenario leaves engine.max_waiting unbounded


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a scenario's model and policies over an "
                       "OpenAI-compatible HTTP API, with Prometheus metrics and a live dashboard")
    p.add_argument("scenario", help="a bundled scenario name or a path to a YAML file")
    p.add_argument("--backend", required=True, help="a real backend: torch, ort, ...")
    p.add_argument("--variant", help="the variant to serve (needed when there are several)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a dotted key (value parsed as YAML); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    p.add_argument("--max-waiting", type=int, default=None, metavar="N",
                   help="requests waiting for admission beyond N get a 503 (default: the "
                   f"scenario's engine.max_waiting, else {DEFAULT_MAX_WAITING})")
    p.add_argument("--record", metavar="DIR", help="write the served traffic (trace.csv, "
                   "requests.csv, serve.json) for `infer-os validate --trace DIR`")
    p.add_argument("--record-text", action="store_true",
                   help="with --record: also write each prompt's text (prompts.jsonl)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model name clients send (default: the scenario's model.spec)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="at shutdown, seconds to let requests in flight finish (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling of requests that "
                   "give no seed (default 0)")
    p.set_defaults(func=run)


def _check(args) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError("must be 0 to 65535", field="--port")
    if args.max_waiting is not None and not 0 <= args.max_waiting <= 100_000:
        raise UserError("must be 0 to 100000", field="--max-waiting")
    if not 0 <= args.drain_timeout <= 3600:
        raise UserError("must be 0 to 3600 seconds", field="--drain-timeout")
    if args.record_text and not args.record:
        raise UserError("needs --record DIR", field="--record-text")
    if args.backend == "sim":
        raise UserError("backend 'sim' predicts, it does not serve: use a real backend "
                        "(torch, ort)", field="--backend")


def _variant(args):
    """(path, variant, scenario) of the variant served."""
    import scenarios
    from sim.config.scenario import resolve_runs

    path = scenarios.locate(args.scenario)
    if path is None:
        raise UserError(f"unknown scenario {args.scenario!r} (bundled: "
                        f"{', '.join(scenarios.names())}; or a path to a YAML file)",
                        field="SCENARIO")
    runs = resolve_runs(path, args.set or [], [args.variant] if args.variant else None)
    if len(runs) > 1:
        raise UserError(f"the scenario has {len(runs)} variants: serve one with --variant "
                        f"({', '.join(v for v, _ in runs)})", field="--variant")
    variant, scn = runs[0]
    if scn.faults.events:
        raise UserError("injected faults are for scripted runs (simulate, measure, validate); "
                        "a server takes none", file=str(path), field="faults")
    # the server reads and writes text: the tokenizer is loaded whatever the scenario feeds
    scn = scn.model_copy(update={"workload": scn.workload.model_copy(
        update={"prompt_text": "shakespeare"})})
    return path, variant, scn


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        import uvicorn  # noqa: F401

        from adapters.serving.server import serve
    except ImportError as err:
        raise BackendUnavailable(f"`infer-os serve` needs the Python package {err.name}, "
                                 "which is not installed here (pip install "
                                 "'infer-os[serve]')") from None
    from sim.run.backends import load_backend
    from sim.run.runner import check_scenario

    load_backend(args.backend)  # unknown or not installed: before anything loads
    path, variant, scn = _variant(args)
    try:
        setup = check_scenario(scn, path.parent, args.backend)
    except UserError as err:
        raise err if err.file else err.at(file=str(path), field=err.field) from None
    max_waiting = args.max_waiting if args.max_waiting is not None else (
        scn.engine.max_waiting if scn.engine.max_waiting is not None else DEFAULT_MAX_WAITING)
    meta = {"scenario": str(path), "variant": variant, "set": list(args.set or []),
            "backend": args.backend, "max_waiting": max_waiting}
    return serve(setup, args, variant, max_waiting, meta,
                 Path(args.record) if args.record else None, sys.stderr)
