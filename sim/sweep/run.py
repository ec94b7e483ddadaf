"""Running a sweep: each point is an independent, deterministic simulation, run on a local process
pool (default, all cores) or a Dask distributed cluster; finished points are logged as they
arrive, points already in the results folder are skipped (resume), and the table and manifest
are written at the end.  A point that raises is a result (status ``failed`` with its error); a
point lost to the executor itself (a worker that died) is not logged, so a rerun retries it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sim.errors import BackendUnavailable, UserError
from sim.run.runner import run_scenario
from sim.sweep.interrupt import Interrupted, deferred, pending_raise, take_pending
from sim.sweep.pointlog import PointLog, checked
from sim.sweep.results import (
    MANIFEST_FILE,
    column_types,
    flat_metrics,
    load_manifest,
    rows,
    write_manifest,
    write_table,
)
from sim.sweep.spec import Point, Sweep

MAX_WORKERS = 256  # --workers at most (or the number of cores, when there are more)
STOP_WAIT_S = 10.0  # for a terminated worker to end before it is killed


def run_point(point: Point) -> dict:
    """The point's record: id, status, error and flat metrics.  A function of the point alone."""
    record = {"point_id": point.point_id, "values": point.values,
              "cost_model": point.cost_model}
    try:
        run = run_scenario(point.scenario, "sweep", point.cost_model, point.base_dir)
    except Exception as err:  # a failed point is recorded and the sweep goes on
        return {**record, "status": "failed", "error": f"{type(err).__name__}: {err}",
                "metrics": {}}
    if run.state.error is not None:  # a policy ended the run early
        return {**record, "status": "failed",
                "error": f"{type(run.state.error).__name__}: {run.error}", "metrics": {}}
    return {**record, "status": "ok", "error": "", "metrics": flat_metrics(run.metrics)}


@dataclass(frozen=True)
class ExecutorSpec:
    """``local`` (a process pool) or ``dask`` (``address`` None: a LocalCluster)."""

    kind: str
    address: str | None = None
    num_workers: int = 0  # 0: all cores

    @classmethod
    def parse(cls, text: str, num_workers: int | None = None) -> ExecutorSpec:
        """``--executor`` and ``--workers`` (None: all cores)."""
        kind, _, address = text.partition("=")
        if kind not in ("local", "dask") or (kind == "local" and address):
            raise UserError(f"unknown executor {text!r} (local, dask or dask=ADDRESS)",
                            field="--executor")
        cores = os.cpu_count() or 1
        most = max(MAX_WORKERS, cores)
        if num_workers is not None and not 1 <= num_workers <= most:
            raise UserError(f"expected 1 to {most} processes, not {num_workers} (default: one "
                            f"per core, {cores} here)", field="--workers")
        return cls(kind, address or None, num_workers or 0)

    @property
    def workers(self) -> int:
        return self.num_workers or os.cpu_count() or 1

    def describe(self) -> str:
        if self.kind == "local":
            return f"local process pool ({self.workers} process{'es' * (self.workers > 1)})"
        if self.address:
            return f"dask {self.address}"
        return f"dask LocalCluster ({self.workers} worker process{'es' * (self.workers > 1)})"


Outcome = tuple[Point, "dict | BaseException"]


def _local(points: list[Point], fn: Callable, spec: ExecutorSpec) -> Iterator[Outcome]:
    # Workers forked from a fresh server that has imported the simulator: cheap to start and
    # safe (forking this process would copy the progress bar's thread and its locks).
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["sim.sweep.run"])
    pool = ProcessPoolExecutor(max_workers=spec.workers, mp_context=context,
                               initializer=_ignore_sigint)
    try:
        with deferred(), _sigint_blocked():  # submitting starts the forkserver and workers
            futures = {pool.submit(fn, p): p for p in points}
        pending_raise()
        for future in as_completed(futures):
            yield futures[future], future.exception() or future.result()
        pool.shutdown(wait=True)
    except BaseException:  # an interrupt, or the caller stopped: drop the queued points
        _stop(pool)
        raise


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back while the pool starts its processes: they inherit the block, so Ctrl-C
    (sent to the whole process group) cannot end one half started; here it arrives after."""
    if not hasattr(signal, "pthread_sigmask"):  # not on Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ignore_sigint() -> None:
    """A worker's: Ctrl-C reaches the whole process group, and the sweep stops its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued points and end the workers now (their points in flight are lost, as
    they would be to a kill: a rerun runs them)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's pool
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(STOP_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join(STOP_WAIT_S)


def _dask(points: list[Point], fn: Callable, spec: ExecutorSpec) -> Iterator[Outcome]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise BackendUnavailable(f"--executor dask needs dask.distributed ({err.name} is not "
                                 "installed): pip install 'infer-os[dask]'") from None
    cluster = None
    if spec.address:
        try:
            client = Client(spec.address, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise UserError(f"cannot reach the Dask scheduler at {spec.address} ({err})",
                            field="--executor") from None
    else:
        cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        run = uuid.uuid4().hex[:8]  # this run's keys: a shared cluster may hold a past run's
        futures = client.map(fn, points, key=[f"sweep-{run}-{p.point_id}" for p in points])
        by_key = {f.key: p for f, p in zip(futures, points)}
        for future in as_completed(futures):
            yield by_key[future.key], future.exception() or future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _nothing() -> Iterator[Outcome]:
    yield from ()


EXECUTORS = {"local": _local, "dask": _dask}


@dataclass
class SweepRun:
    """What one run of the sweep did (the ``--json`` summary)."""

    sweep: str
    out_dir: Path
    executor: str
    num_points: int
    num_skipped: int = 0  # already in the folder (resume)
    num_run: int = 0
    num_ok: int = 0
    num_failed: int = 0
    lost: list[str] = field(default_factory=list)  # executor errors: not logged, rerun retries
    wall_s: float = 0.0
    files: list[str] = field(default_factory=list)
    num_done: int = 0  # points with a record (this run's and earlier ones')
    interrupted: int | None = None  # the signal that stopped the run (then it is incomplete)

    def summary(self) -> dict:
        return {"sweep": self.sweep, "out": str(self.out_dir), "executor": self.executor,
                "num_points": self.num_points, "num_skipped": self.num_skipped,
                "num_run": self.num_run, "num_ok": self.num_ok, "num_failed": self.num_failed,
                "num_lost": len(self.lost), "wall_s": round(self.wall_s, 3),
                "points_per_s": round(self.num_run / self.wall_s, 3) if self.num_run else None,
                "files": self.files}


def run_sweep(sweep: Sweep, out_dir: Path, spec: ExecutorSpec,
              on_point: Callable[[dict], None] | None = None,
              fn: Callable[[Point], dict] = run_point,
              on_warning: Callable[[str], None] | None = None) -> SweepRun:
    """Run the points not yet in ``out_dir``; log each as it ends; write table and manifest.
    ``on_point`` sees every record as it is logged (a progress bar); ``on_warning`` is told of
    a corrupt log line or manifest (skipped, replaced).  Under ``interrupt.on_signals`` a
    SIGINT/SIGTERM stops the workers and the results are written, the manifest ``incomplete``,
    and the run's ``interrupted`` says which signal.  Worker processes import the caller's main
    module: a script calling this needs ``if __name__ == "__main__":``."""
    warn = on_warning or logging.getLogger(__name__).warning
    log = PointLog(out_dir)
    if log.num_corrupt:
        s = "s" * (log.num_corrupt > 1)
        warn(f"{log.path}: {log.num_corrupt} corrupt line{s} skipped and removed (the "
             f"point{s} run again)")
    done = log.records()
    todo = [p for p in sweep.points if p.point_id not in done]
    result = SweepRun(sweep.spec.name, out_dir, spec.describe(), len(sweep.points),
                      num_skipped=len(sweep.points) - len(todo))
    manifest, problem = load_manifest(out_dir)
    if problem:
        warn(f"{out_dir / MANIFEST_FILE}: {problem}; replaced by this run's manifest (the "
             "record of earlier runs is lost)")
    earlier = manifest.get("runs", [])  # the folder's previous runs
    t0 = time.perf_counter()
    try:
        _manifest(sweep, result, "running", [], earlier)
        with closing(EXECUTORS[spec.kind](todo, fn, spec) if todo else _nothing()) as outcomes:
            for point, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    result.lost.append(f"{point.point_id}: {type(outcome).__name__}: {outcome}")
                    continue
                with deferred():  # a whole line in the log and the point counted, or neither
                    record = checked(outcome)
                    log.append(record)
                    done[point.point_id] = record
                    result.num_run += 1
                pending_raise()
                if on_point is not None:
                    on_point(record)
    except Interrupted as stop:
        result.interrupted = stop.signum
    except Exception:
        result.interrupted = take_pending()  # a signal held meanwhile: the error is the stop's
        if result.interrupted is None:  # (the process group's signal ended a worker starting)
            raise
    finally:
        with deferred():  # the results are written whole, whatever arrives meanwhile
            result.wall_s = time.perf_counter() - t0
            log.close()
            table = rows(sweep.points, done)
            result.num_done = len(table)
            result.num_ok = sum(r["status"] == "ok" for r in table)
            result.num_failed = sum(r["status"] == "failed" for r in table)
            result.files = write_table(out_dir, table) if table else []
            complete = len(table) == len(sweep.points)
            _manifest(sweep, result, "complete" if complete else "incomplete", table, earlier)
        result.interrupted = result.interrupted or take_pending()
    return result


def _manifest(sweep: Sweep, result: SweepRun, state: str, table: list[dict],
              earlier: list[dict]) -> None:
    spec = sweep.spec
    this_run = {"executor": result.executor, "num_run": result.num_run,
                "num_skipped": result.num_skipped, "num_lost": len(result.lost),
                "wall_s": round(result.wall_s, 3)}
    write_manifest(result.out_dir, {
        "sweep": spec.name, "description": spec.description, "state": state,
        "file": str(sweep.path), "definition": spec.model_dump(mode="json"),
        "base": str(sweep.base_path), "context": sweep.context,
        "axes": list(spec.axes) + ([] if "cost_model" in spec.axes else ["cost_model"]),
        "sampling": "grid" if spec.samples is None else f"random ({spec.samples}, seed "
                                                        f"{spec.seed})",
        "num_points": len(sweep.points), "num_ok": result.num_ok,
        "num_failed": result.num_failed, "num_lost": len(result.lost),
        "executor": result.executor, "wall_s": round(result.wall_s, 3),
        "num_run": result.num_run, "num_skipped": result.num_skipped,
        "files": result.files, "column_types": column_types(table),
        "runs": [*earlier, this_run]})
