"""``infer-os calibrate-quality``: fit a quality profile (the quality model's penalties) on your own
text, and check it on the policies it was not fitted on.

    infer-os calibrate-quality [--text python-docs|play:NAME|FILE.txt] [--model smollm2-135m|PATH]
        [--windows N] [--context TOKENS] [--train JOB,...] [--jobs JOB,...] [--threads N]
        [--device cpu|cuda|auto] [--prior PROFILE] [--out PROFILE.yaml] [--json]
    infer-os calibrate-quality --from PROFILE.yaml [--from OTHER.yaml]... [--train JOB,...]
        [--prior PROFILE] [--out ...] [--json]
    ... [--check-on OTHER.yaml]...

Runs the sixteen tiering jobs of ``adapters.decoding.quality_jobs`` over ``--windows`` windows of
the text through the real paged KV store (teacher-forced; with SmolLM2-135M on the 2 CPU threads
of the development machine about 20 s a job per 2,048-token window: 10 minutes for the default
2 windows; ``--jobs`` runs fewer), fits the penalties on the ``--train`` jobs and prints every
job's measured delta-PPL, its 90 % spread, the prediction and the verdict (``noise``: inside the
spread).  The held-out jobs are the check.  ``--out`` writes the profile, which a scenario names
as ``quality: {profile: PATH}`` (or ``--set quality.profile=PATH``); ``--from`` refits from the
runs a profile records, without running the model (repeated: on a set of texts, each text's
delta-PPL read relative to its own FP16 perplexity and scaled to the first one's);
``--check-on`` checks the fit on the runs another profile records (another text: held-out
policies on a held-out text).  A quality profile holds for text like the text it was fitted on
(docs/validation.md: between Shakespeare and technical prose the bundled fit misses by
37-84 %, between plays 10-45 %), so fit on text like your traffic's.  ``--prior`` makes that a
probe: the penalties the train jobs leave unpriced come from another profile, read relative to
its FP16 perplexity (``--jobs int2,h2o --train int2,h2o --prior smollm2-135m``: three runs, the
text's own cost of INT2 and of evictions, which is what moves between texts; INT8 and INT4 from
the prior).  Without ``--prior`` a train set that leaves a penalty unpriced is refused before
the model runs (``HOLDS``: what each job is built to hold).

Exit 0 when it ran, 2 on bad input (an unknown text or job, a text too short for the windows, a
train set that leaves a penalty unpriced), 3 without torch.  Imports torch only when it runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from adapters.calibration.checks import bounded
from sim.errors import BackendUnavailable, UserError

DEFAULT_TEXT = "python-docs"
DEFAULT_MODEL = "smollm2-135m"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate-quality", help="fit the quality model's penalties on "
                              "your own text through the real KV store, checked on held-out "
                              "policies; writes a quality profile")
    p.add_argument("--text", default=DEFAULT_TEXT, help="python-docs (default), play:NAME "
                   "(e.g. play:hamlet) or the path of a UTF-8 text file")
    p.add_argument("--model", default=DEFAULT_MODEL, help="smollm2-135m (default), a .gguf file "
                   "or a local Hugging Face directory")
    p.add_argument("--windows", default=2, help="windows of text, 1 to 64 (default 2; the spread "
                   "halves with 4x the windows)")
    p.add_argument("--context", default=2048, help="tokens per window, 640 to 32768, scored "
                   "from token 512 (default 2048)")
    p.add_argument("--train", default=None, help="jobs to fit on, comma separated (default "
                   "int8,int4,int2,h2o); every other job is held out")
    p.add_argument("--jobs", default=None, help="run only these jobs, comma separated (fp16, the "
                   "base, always runs; the train jobs must be among them; default: all 16)")
    p.add_argument("--threads", default=None, help="torch CPU threads, 1 to 1024")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--from", dest="source", action="append", metavar="PROFILE.yaml",
                   help="refit from the runs this quality profile records (no model run); "
                   "repeat it to fit on a set of texts (each text's delta-PPL read relative to "
                   "its own base; the profile keeps the first one's base perplexity)")
    p.add_argument("--check-on", action="append", metavar="PROFILE.yaml", help="also check the "
                   "fit on the runs another quality profile records (another text; each job "
                   "predicted at that text's FP16 perplexity); repeatable")
    p.add_argument("--prior", metavar="PROFILE", help="a quality profile (bundled name or "
                   "path) that prices what the train jobs leave unpriced, scaled to this "
                   "text's FP16 perplexity: with --jobs int2,h2o,int4 --train int2,h2o,int4 a "
                   "new text is probed in 4 runs, INT8 taken from the prior (3 runs without "
                   "int4: INT4 from the prior too)")
    p.add_argument("--out", metavar="PROFILE.yaml", help="write the fitted quality profile here")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run, stop_on_sigterm=True)
    return p


def _check(args: argparse.Namespace) -> None:
    from adapters.decoding.quality_jobs import DEFAULT_TRAIN, FITTED, HOLDS, job_list

    args.windows = bounded(args.windows, "--windows", 1, 64)
    args.context = bounded(args.context, "--context", 640, 32768)
    if args.threads is not None:
        args.threads = bounded(args.threads, "--threads", 1, 1024)
    args.train = job_list(args.train) if args.train is not None else list(DEFAULT_TRAIN)
    if args.jobs is not None:
        if args.source:
            raise UserError("--from refits the runs a profile records; --jobs runs the model",
                            field="--jobs")
        args.jobs = job_list(args.jobs, "--jobs")
        left = [n for n in args.train if n not in args.jobs]
        if left:
            raise UserError(f"train job {left[0]!r} is not among them", field="--jobs")
    if not args.source and args.prior is None:
        blind = [p for p in FITTED if not any(p in HOLDS.get(n, ()) for n in args.train)]
        if blind:  # known before the model runs (the fit checks it again on what it measured)
            raise UserError(f"no train job holds {' or '.join(blind)}: the fit cannot price "
                            f"it (default: {','.join(DEFAULT_TRAIN)}; or take it from another "
                            f"text's profile with --prior)", field="--train")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError("is a folder; give a file name (PROFILE.yaml)", file=str(out),
                            field="--out")
        if out.suffix not in (".yaml", ".yml"):
            raise UserError("a quality profile is a .yaml file (a scenario names it by its "
                            "suffix)", file=str(out), field="--out")


def _measured(args: argparse.Namespace):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("calibrate-quality runs the model: it needs torch "
                                 "(pip install 'infer-os[torch]')") from None
    from adapters.decoding.quality_check import text_windows
    from adapters.decoding.quality_jobs import run_jobs
    from adapters.model.loading import describe_device, load_model
    from adapters.model.text import text_source

    text = text_source(args.text)  # an unknown or unreadable text is exit 2 before the model
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype="float32", device=args.device)
    if loaded.tokenizer is None:
        raise UserError("has no tokenizer: the text cannot be encoded", field="--model")
    windows = text_windows(loaded.tokenizer.encode(text), args.windows, args.context, args.text)
    t0 = time.perf_counter()

    def done(name: str, ppl: float) -> None:
        print(f"  {name}: PPL {ppl:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    count = 1 + len(args.jobs) if args.jobs else 16
    print(f"{len(windows)} window{'s' * (len(windows) > 1)} of {args.context} tokens of "
          f"{args.text}; {count} jobs", file=sys.stderr)
    jobs = run_jobs(loaded.model, windows, done, args.jobs)
    device = describe_device(loaded.model.tok_embeddings.weight.device)
    source = args.model if Path(args.model).exists() else \
        f"{args.model} ({Path(loaded.source).name})"  # a preset: its file, not where it lies
    record = (f"{source} fp32 on {device}, {args.text}: {args.windows} windows of "
              f"{args.context} tokens, scored from token 512, chunks of 128, KV blocks of 64 "
              f"tokens, INT groups of 64, FP tier FP16, measured attention")
    return jobs, {}, {"model": args.model, "text": record}


def _profile(path: str, flag: str):
    """(jobs, spreads, record) of the runs a quality profile records; errors at ``flag``."""
    from adapters.decoding.quality_jobs import stored_jobs

    data = _read(path, flag)
    try:
        jobs, spreads = stored_jobs(data)
    except UserError as err:
        raise UserError(err.message, file=path, field=flag) from None
    origin = {k: data[k] for k in ("model", "command", "date", "text") if k in data}
    return jobs, spreads, origin


def run(args: argparse.Namespace) -> int:
    from adapters.decoding.quality_jobs import fit, held_out_summary, profile
    from sim.config import quality_profile

    _check(args)
    t0 = time.perf_counter()
    prior = _prior(args.prior) if args.prior else None  # a bad prior: exit 2 before any run
    sources = args.source or []
    jobs, spreads, origin = _profile(sources[0], "--from") if sources else _measured(args)
    also = [(path, _profile(path, "--from")) for path in sources[1:]]
    also_jobs = [loaded[0] for _, loaded in also]
    for path, js in [(sources[0] if sources else None, jobs), *((p, a[0]) for p, a in also)]:
        known = {j.run.name for j in js}
        missing = [n for n in args.train if n not in known]
        if missing:
            raise UserError(f"the profile records no {missing[0]!r} run", file=path,
                            field="--train")
    this = {"command": _command(args),
            "date": datetime.date.today().isoformat()}
    origin = {**origin, "refit": this} if args.source else {**origin, **this}
    texts = f" of {len(sources)} texts" if len(sources) > 1 else ""
    cfg, rows = fit(jobs, args.train, f"fitted by infer-os calibrate-quality on "
                    f"{','.join(args.train)}{texts}", spreads, also_jobs, prior)
    doc = profile(origin, jobs, rows, cfg, args.train)
    if prior is not None:
        doc["prior"] = _prior_record(args.prior, prior, jobs, args.train, also_jobs)
    if also:  # each further text: its runs against the fit (its train jobs were fitted on)
        doc["also_fitted_on"] = [_checked(path, loaded, cfg, args.train)
                                 for path, loaded in also]
    if args.out:
        quality_profile.write(Path(args.out), doc, header="A fitted quality profile "
                              "(sim/config/quality_profile.py), written by infer-os "
                              "calibrate-quality.")
        quality_profile.read(str(Path(args.out).resolve()))  # what was written reads back
    summary = held_out_summary(rows)
    checks = [_checked(path, _profile(path, "--check-on"), cfg, args.train)
              for path in args.check_on or []]
    out = {"profile": doc, "held_out": summary, "checks": checks, "out": args.out,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print_table(doc, summary)
        for other in doc.get("also_fitted_on", []):
            print_table(other, other["held_out"], f"also fitted on {other['profile']}")
        for check in checks:
            print_table(check, check["held_out"], f"checked on {check['profile']}")
        if args.out:
            print(f"wrote {args.out}: name it in a scenario as quality: {{profile: {args.out}}} "
                  f"or --set quality.profile={args.out}")
        else:
            print("(no --out: nothing written)")
    return 0


def _read(name: str, flag: str) -> dict:
    """A quality profile (a bundled name or a path); an error in it is one at ``flag``."""
    from sim.config import quality_profile

    try:
        return quality_profile.read(name)
    except UserError as err:
        raise UserError(err.lines[0], field=flag) from None  # the line names the file


def _prior(name: str) -> dict:
    """The ``--prior`` profile's base perplexity and penalties (a bundled name or a path)."""
    data = _read(name, "--prior")
    return {"base_ppl": data["base_ppl"], "penalties": data["penalties"]}


def _prior_record(name: str, prior: dict, jobs, train: list[str], also) -> dict:
    """What the profile records of its prior: which penalties came from it, at what base."""
    from adapters.decoding.quality_jobs import unpriced

    return {"profile": name, "base_ppl": prior["base_ppl"],
            "penalties_taken": unpriced(jobs, train, also)}


def _checked(path: str, loaded, cfg, train: list[str]) -> dict:
    """The fit checked on the runs of another profile (another text; ``loaded``: its
    ``_profile``)."""
    from adapters.decoding.quality_jobs import check_on, held_out_summary, row_record

    jobs, spreads, origin = loaded
    rows = check_on(cfg, jobs, train, spreads)
    base = next(j.run.ppl for j in jobs if j.run.name == "fp16")
    return {"profile": path, "text": origin.get("text"), "base_ppl": round(base, 4),
            "held_out": held_out_summary(rows),
            "runs": [row_record(row, j) for row, j in zip(rows, jobs)]}


def _command(args: argparse.Namespace) -> str:
    """The command that makes this profile again (its flags, defaults spelled out)."""
    if args.source:
        parts = [part for path in args.source for part in ("--from", path)]
    else:
        parts = ["--text", args.text, "--model", args.model, "--windows", str(args.windows),
                 "--context", str(args.context)]
        parts += ["--device", args.device] if args.device != "cpu" else []
        parts += ["--jobs", ",".join(args.jobs)] if args.jobs else []
    parts += ["--train", ",".join(args.train)]
    parts += ["--prior", args.prior] if args.prior else []
    parts += ["--out", args.out] if args.out else []
    return "infer-os calibrate-quality " + " ".join(parts)


def print_table(doc: dict, summary: dict, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if title is None:
        p = doc["penalties"]
        title = (f"quality profile fitted on {', '.join(doc['train'])}: base PPL "
                 f"{doc['base_ppl']:.3f}; delta-PPL per unit: int8 {p['int8']:.4g}, int4 "
                 f"{p['int4']:.4g}, int2 {p['int2']:.4g}, missing {p['missing']:.4g}")
    else:
        title += f" (base PPL {doc['base_ppl']:.3f})"
    t = Table(title=title)
    for col in ("job", "role", "measured", "spread (90 %)", "predicted", "error", "verdict"):
        t.add_column(col, justify="left" if col in ("job", "role") else "right")
    for r in doc["runs"]:
        err, spread = r["relative_error"], r["spread"]
        t.add_row(r["name"], r["role"], f"{r['measured_delta_ppl']:+.3f}",
                  "-" if spread is None else f"{spread[0]:+.3f} .. {spread[1]:+.3f}",
                  f"{r['predicted_delta_ppl']:+.3f}", "-" if err is None else f"{err:+.0%}",
                  r["verdict"] or "-")
    Console(width=None if sys.stdout.isatty() else 150).print(t)
    s = summary
    med, large, inside = (s["median_abs_relative_error"], s["median_abs_relative_error_large"],
                          s["within_spread"])

    def pct(x):
        return "-" if x is None else f"{x:.0%}"
    if not s["jobs"]:
        print("held out: none (only the train jobs ran: the profile is fitted, not checked)")
        return
    print(f"held out: {s['jobs']} jobs, median |error| {pct(med)}; the {s['large_jobs']} with a "
          f"measured delta-PPL of 0.1 or more: median |error| {pct(large)}; the other "
          f"{s['small_jobs']}: {s['small_within_abs']} within 0.05 absolute; "
          f"{s['within_bound']} of {s['jobs']} within the bound one by one; "
          + ("no measured spread (fewer than 4 scored chunks, or none recorded)" if inside is None
             else f"{inside} inside their measured spread"))
