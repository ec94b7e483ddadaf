"""Workloads: the requests of a run (arrival time, prompt and output lengths), all seeded."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.config.paths import resolve_path
from sim.config.scenario import (
    ClosedLoop,
    Fixed,
    LogNormal,
    Poisson,
    TraceFile,
    Uniform,
    WorkloadConfig,
)
from sim.config.seeds import random_stream
from sim.errors import UserError


@dataclass(frozen=True)
class Requests:
    """Columns of the run's requests, indexed by request id.  ``arrival_s`` is NaN for a closed
    loop, where a request arrives when a user's previous one completes."""

    arrival_s: np.ndarray  # float64
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    concurrency: int | None = None  # closed loop: number of users
    think_s: float = 0.0

    def __len__(self) -> int:
        return len(self.prompt_tokens)


def draw_lengths(dist: Fixed | Uniform | LogNormal, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(dist, Fixed):
        return np.full(n, dist.value, dtype=np.int64)
    if isinstance(dist, Uniform):
        return rng.integers(dist.low, dist.high + 1, size=n, dtype=np.int64)
    raw = rng.lognormal(np.log(dist.median), dist.sigma, size=n)
    return np.clip(np.rint(raw), dist.low, dist.high).astype(np.int64)


def read_trace(path: Path) -> Requests:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]  # physical line numbers
    except OSError as err:
        raise UserError(f"cannot read trace ({err.strerror})", file=str(path)) from None
    cols: dict[str, list[float]] = {"arrival_s": [], "prompt_tokens": [], "output_tokens": []}
    for line, row in rows:
        for key, values in cols.items():
            try:
                value = float(row[key]) if key == "arrival_s" else int(row[key])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"line {line}: bad or missing {key!r}", file=str(path)) from None
            if not math.isfinite(value) or value < (0 if key == "arrival_s" else 1):
                raise UserError(f"line {line}: {key} out of range", file=str(path))
            values.append(value)
    if not rows:
        raise UserError("trace has no requests", file=str(path))
    order = np.argsort(np.asarray(cols["arrival_s"]), kind="stable")
    return Requests(np.asarray(cols["arrival_s"], dtype=np.float64)[order],
                    np.asarray(cols["prompt_tokens"], dtype=np.int64)[order],
                    np.asarray(cols["output_tokens"], dtype=np.int64)[order])


def make_requests(cfg: WorkloadConfig, seed: int, base_dir: Path) -> Requests:
    """Arrivals and lengths from independent streams of one seed."""
    rng_arrival, rng_prompt, rng_output = (
        random_stream(seed, name) for name in ("arrivals", "prompt_lengths", "output_lengths"))
    arrival = cfg.arrival
    if isinstance(arrival, TraceFile):
        return read_trace(resolve_path(arrival.path, base_dir))
    n = cfg.num_requests
    prompts = draw_lengths(cfg.prompt_tokens, n, rng_prompt)
    outputs = draw_lengths(cfg.output_tokens, n, rng_output)
    if isinstance(arrival, Poisson):
        times = np.cumsum(rng_arrival.exponential(1.0 / arrival.rate_per_s, size=n))
        return Requests(times, prompts, outputs)
    assert isinstance(arrival, ClosedLoop)
    return Requests(np.full(n, np.nan), prompts, outputs, arrival.concurrency, arrival.think_s)
