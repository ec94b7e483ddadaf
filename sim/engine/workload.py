"""Workloads: the requests of a run (arrival time, prompt and output lengths), all seeded."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.config.frozen import MAX_REQUESTS, MAX_SIM_S, MAX_TOKENS
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


# per bad row reported (the count of the rest follows): enough to see a pattern, not a flood
MAX_REPORTED_ROWS = 20
_COLUMNS = {"arrival_s": (0.0, MAX_SIM_S, f"0 to {MAX_SIM_S:g} s"),
            "prompt_tokens": (1, MAX_TOKENS, f"1 to {MAX_TOKENS:,}"),
            "output_tokens": (1, MAX_TOKENS, f"1 to {MAX_TOKENS:,}")}


def read_trace(path: Path, max_rows: int = MAX_REQUESTS) -> Requests:
    """The requests of a trace CSV (columns in any order; rows sorted by arrival, stable).
    Every row is checked: a finite arrival in [0, MAX_SIM_S] s, lengths in [1, MAX_TOKENS], at
    most ``max_rows`` rows; ``UserError`` names the file and each bad line."""
    cols: dict[str, list[float]] = {key: [] for key in _COLUMNS}
    errors: list[UserError] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for num_rows, row in enumerate(reader, 1):
                if num_rows > max_rows:
                    raise UserError(f"line {reader.line_num}: more than {max_rows:,} requests",
                                    file=str(path))
                _read_row(row, reader.line_num, cols, errors, str(path))
    except OSError as err:
        raise UserError(f"cannot read trace ({err.strerror})", file=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", file=str(path)) from None
    except ValueError:  # a NUL character in the path
        raise UserError("cannot read trace (a NUL character in the path)",
                        file=str(path).replace("\0", "\\0")) from None
    except csv.Error as err:
        raise UserError(f"line {reader.line_num}: {err}", file=str(path)) from None
    if errors:
        more = len(errors) - MAX_REPORTED_ROWS
        shown = errors[:MAX_REPORTED_ROWS]
        if more > 0:
            shown.append(UserError(f"{more} more bad lines", file=str(path)))
        raise UserError.collect(shown)
    if not cols["arrival_s"]:
        raise UserError("trace has no requests", file=str(path))
    order = np.argsort(np.asarray(cols["arrival_s"]), kind="stable")
    return Requests(np.asarray(cols["arrival_s"], dtype=np.float64)[order],
                    np.asarray(cols["prompt_tokens"], dtype=np.int64)[order],
                    np.asarray(cols["output_tokens"], dtype=np.int64)[order])


def _read_row(row: dict, line: int, cols: dict[str, list[float]], errors: list[UserError],
              file: str) -> None:
    """One row's values appended to ``cols``, or its first problem to ``errors``."""
    values = []
    for key, (low, high, allowed) in _COLUMNS.items():
        raw = row.get(key)
        try:
            value = float(raw) if key == "arrival_s" else int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            errors.append(UserError(f"line {line}: bad or missing {key!r}", file=file))
            return
        if not (math.isfinite(value) and low <= value <= high):
            errors.append(UserError(f"line {line}: {key} out of range ({allowed}, got "
                                    f"{raw.strip()[:20]})", file=file))
            return
        values.append(value)
    for key, value in zip(_COLUMNS, values):
        cols[key].append(value)


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
