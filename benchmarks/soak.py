"""Soak: the real torch executor for a bounded time with tiering, speculation and buffer churn;
memory must stop growing after warm-up and no request may be lost.

SmolLM2-135M on the CPU (``smollm2-cpu``'s model and backend), a closed loop of 2 users with
varied prompt (lognormal, 32-480 tokens) and output lengths (16-160), n-gram drafts under the
``dynamic`` speculation policy, ``adaptive`` buffers, and a KV budget small enough that the
tiering policies move blocks (int8 / int4, host offload and back, eviction and recompute).  Back
to back runs (``sim.run.runner.run_scenario``, backend ``torch``) of ``--requests`` requests each,
rotating the tiering policy and the seed, until ``--minutes`` have passed (the last run ends past
the limit by less than one run).  Each run builds a fresh executor, KV store and pools; the model
and tokenizer (``load_shared``'s cache), the prompt corpus and the allocators persist.

Every ``--sample-s`` seconds, at the next run boundary (nothing in flight): ``gc.collect()``, live
torch tensor bytes (every tensor the garbage collector tracks, each storage counted once), the
Python object count, then process RSS before and after glibc's ``malloc_trim(0)`` (after: live
memory plus fragmentation; before, the heap keeps ~500 MB freed by loading the GGUF weights, in
which a leak would hide); between samples, the highest RSS seen when a request ended (in-run
peak).  Growth = last sample - the sample ending warm-up (``--warmup-samples``, default 2:
samples 0 and 1 are warm-up, sample 2 the baseline).  PASS: trimmed RSS and tensor bytes grow by
<= ``--max-growth-pct`` (1 %) and every request completes with exactly its output length (a run
the executor crashes loses all its requests; the soak goes on).  Exit code 1 on FAIL.

    python benchmarks/soak.py [--minutes 20] [--sample-s 60] [--requests 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import resource
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from sim.api import Run, load_scenario
from sim.engine.state import COMPLETED
from sim.run.runner import run_scenario

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1e6

# the tiering policy of run i is TIERING[i % len(TIERING)]: progressive moves blocks by memory
# pressure and measured attention (int8 / int4, host offload and restore, or eviction and
# recompute) under the soak's KV budget; uniform quantizes every block as it fills
TIERING: list[tuple[str, dict]] = [
    ("progressive", {"kind": "progressive"}),
    ("uniform-int8", {"kind": "uniform", "precision": "int8"}),
    ("progressive-evict", {"kind": "progressive", "evict": True, "keep_backup": False}),
    ("uniform-int4", {"kind": "uniform", "precision": "int4"}),
]


def _malloc_trim():
    """glibc's ``malloc_trim``: free heap pages go back to the OS (None elsewhere)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def live_tensors() -> tuple[int, int]:
    """(bytes, count) of the tensors the garbage collector tracks, each storage counted once."""
    seen: dict[tuple[int, int], int] = {}
    count = 0
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):
            count += 1
            try:
                st = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. a meta or sparse tensor
                continue
            seen[(st.data_ptr(), st.device.index or 0)] = st.nbytes()
    return sum(seen.values()), count


@dataclass
class Sample:
    t_s: float
    runs: int
    completed: int
    lost: int
    rss_untrimmed: int  # as the process holds it: freed heap the allocator keeps included
    rss: int  # after gc.collect() and malloc_trim(0): live memory and fragmentation
    tensor_bytes: int
    tensors: int
    objects: int
    peak_rss: int  # highest RSS seen at a request's end since the previous sample
    kv_moves: int
    allocs: int
    reuses: int


@dataclass
class Totals:
    runs: int = 0
    requests: int = 0
    completed: int = 0
    lost: int = 0
    kv_moves: int = 0
    moves: dict[str, int] = field(default_factory=dict)  # KV block moves by kind
    allocs: int = 0
    reuses: int = 0
    # accepted + rejections + empty drafts, and accepted: the per-token acceptance probability
    proposed_accepted: list[int] = field(default_factory=lambda: [0, 0])
    peak_rss: int = 0
    lost_detail: list[str] = field(default_factory=list)


def soak_run(base: Run, i: int, requests: int, kv_budget_mb: float, block_tokens: int) -> Run:
    name, tiering = TIERING[i % len(TIERING)]
    run = base.with_changes({
        "seed": i,
        "workload.num_requests": requests,
        "workload.prompt_tokens": {"kind": "lognormal", "median": 160, "sigma": 0.6,
                                   "low": 32, "high": 480},
        "workload.output_tokens": {"kind": "uniform", "low": 16, "high": 160},
        "engine.kv_budget_bytes": kv_budget_mb * MB,
        "engine.block_tokens": block_tokens,
        "engine.kv_quant_group": block_tokens,
        "engine.tiering_interval_steps": 4,
        "policies.tiering": tiering,
        "policies.speculation": {"kind": "dynamic"},
        "policies.buffers": {"kind": "adaptive"},
    })
    return Run(run.scenario, name, run.file)


def one_run(run: Run, totals: Totals) -> None:
    def done(n: int = 1) -> None:
        totals.peak_rss = max(totals.peak_rss, rss_bytes())

    totals.runs += 1
    try:
        out = run_scenario(run.scenario, run.name, None, run.base_dir, backend="torch",
                           on_done=done)
    except Exception as err:  # the executor crashed: the whole run's requests are lost
        n = run.scenario.workload.num_requests
        inner: BaseException = err
        while inner.__cause__ is not None:  # SimPy re-raises a process's error from itself
            inner = inner.__cause__
        where = traceback.extract_tb(inner.__traceback__)[-1]
        totals.requests += n
        totals.lost += n
        totals.lost_detail.append(
            f"run {totals.runs} ({run.name}, seed {run.scenario.seed}), all {n} requests: "
            f"{type(inner).__name__}: {inner} "
            f"(at {os.path.relpath(where.filename)}:{where.lineno})")
        return
    m, state, reqs = out.metrics, out.state, out.requests
    ok = (state.status == COMPLETED) & (state.generated == reqs.output_tokens)
    totals.requests += len(reqs)
    totals.completed += int(ok.sum())
    totals.lost += int((~ok).sum())
    for rid in np.flatnonzero(~ok).tolist():
        totals.lost_detail.append(f"run {totals.runs} ({run.name}) request {rid}: "
                                  f"{state.fail_reason.get(rid, 'wrong output length')}")
    if out.error:
        totals.lost_detail.append(f"run {totals.runs} ({run.name}): {out.error}")
    totals.kv_moves += sum(m["kv_moves"].values())
    for kind, n in m["kv_moves"].items():
        totals.moves[kind] = totals.moves.get(kind, 0) + n
    totals.allocs += m["buffers"]["num_allocs"]
    totals.reuses += m["buffers"]["num_reuses"]
    rep = out.report
    if rep is not None:
        totals.proposed_accepted[0] += rep.draft_accepted + rep.draft_rejections + rep.draft_empty
        totals.proposed_accepted[1] += rep.draft_accepted


def take_sample(t0: float, totals: Totals) -> Sample:
    gc.collect()
    tbytes, ntensors = live_tensors()
    untrimmed = rss_bytes()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    rss = rss_bytes()
    s = Sample(time.monotonic() - t0, totals.runs, totals.completed, totals.lost, untrimmed, rss,
               tbytes, ntensors, len(gc.get_objects()), max(totals.peak_rss, untrimmed),
               totals.kv_moves, totals.allocs, totals.reuses)
    totals.peak_rss = 0
    return s


def pct(new: int, old: int) -> float:
    return 100.0 * (new - old) / old if old else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--requests", type=int, default=6, help="requests per run")
    ap.add_argument("--warmup-samples", type=int, default=2)
    ap.add_argument("--max-growth-pct", type=float, default=1.0)
    ap.add_argument("--kv-budget-mb", type=float, default=16.0,
                    help="device KV budget (FP16 KV is 23 kB a token, a request at most 640 "
                         "tokens: pressure on the tiers)")
    ap.add_argument("--block-tokens", type=int, default=32,
                    help="KV block size, also the quantization group")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()

    base = load_scenario("smollm2-cpu", "baseline").with_changes(
        {"backend.threads": args.threads, "backend.device": "cpu"})
    totals = Totals()
    t0 = time.monotonic()
    deadline = t0 + 60 * args.minutes
    # sample 0: before any run (the model is loaded by the first run)
    samples = [take_sample(t0, totals)]
    print(f"soak: {args.minutes:g} min, a sample every {args.sample_s:g} s at the next run "
          f"boundary, {args.requests} requests a run, torch threads {args.threads}", flush=True)
    i = 0
    while time.monotonic() < deadline:
        run = soak_run(base, i, args.requests, args.kv_budget_mb, args.block_tokens)
        r0 = time.monotonic()
        one_run(run, totals)
        print(f"  run {i + 1:3d} {run.name:18} {time.monotonic() - r0:6.1f} s  "
              f"completed {totals.completed}/{totals.requests}", flush=True)
        i += 1
        now = time.monotonic()
        if now - t0 >= samples[-1].t_s + args.sample_s or now >= deadline:
            samples.append(take_sample(t0, totals))

    print()
    print("| sample | t (s) | runs | completed | lost | RSS MB | RSS vs baseline "
          "| untrimmed RSS MB | in-run peak RSS MB | tensor MB | tensors | Python objects "
          "| KV moves | buffer allocs / reuses |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    k = min(args.warmup_samples, len(samples) - 1)
    b = samples[k]
    for n, s in enumerate(samples):
        vs = "warm-up" if n < k else f"{(s.rss - b.rss) / MB:+.2f} MB ({pct(s.rss, b.rss):+.2f} %)"
        print(f"| {n} | {s.t_s:.0f} | {s.runs} | {s.completed} | {s.lost} | {s.rss / MB:.1f} | "
              f"{vs} | {s.rss_untrimmed / MB:.1f} | {s.peak_rss / MB:.1f} | "
              f"{s.tensor_bytes / MB:.2f} | {s.tensors} | {s.objects} | {s.kv_moves} | "
              f"{s.allocs} / {s.reuses} |")
    last = samples[-1]
    rss_pct, tensor_pct = pct(last.rss, b.rss), pct(last.tensor_bytes, b.tensor_bytes)
    enough = len(samples) > k + 1
    proposed, accepted = totals.proposed_accepted
    print()
    print(f"runs {totals.runs}, requests {totals.requests}: completed {totals.completed}, "
          f"lost {totals.lost}; KV block moves {totals.kv_moves} "
          f"({', '.join(f'{k} {n}' for k, n in sorted(totals.moves.items()))}); draft tokens "
          f"accepted {accepted}, per-token acceptance {accepted / proposed if proposed else 0:.2f}")
    print(f"growth after warm-up (sample {k} at {b.t_s:.0f} s -> sample {len(samples) - 1} at "
          f"{last.t_s:.0f} s): RSS {(last.rss - b.rss) / MB:+.2f} MB ({rss_pct:+.2f} %), "
          f"tensors {(last.tensor_bytes - b.tensor_bytes) / MB:+.3f} MB ({tensor_pct:+.2f} %), "
          f"Python objects {last.objects - b.objects:+d}; max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.1f} MB")
    for line in totals.lost_detail[:20]:
        print(f"  lost: {line}")
    failed = [why for bad, why in (
        (not enough, f"too few samples after warm-up ({len(samples)}): run longer"),
        (rss_pct > args.max_growth_pct, f"RSS grew {rss_pct:.2f} % > {args.max_growth_pct:g} %"),
        (tensor_pct > args.max_growth_pct,
         f"tensor bytes grew {tensor_pct:.2f} % > {args.max_growth_pct:g} %"),
        (totals.lost > 0, f"{totals.lost} requests lost"),
    ) if bad]
    print("FAIL: " + "; ".join(failed) if failed else
          f"PASS: growth <= {args.max_growth_pct:g} % after warm-up, no request lost")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
