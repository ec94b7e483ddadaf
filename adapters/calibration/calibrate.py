"""``infer-os calibrate --backend torch|ort``: time the real executor on this machine and fit the
``calibrated`` cost model's profile (``sim.costs.calibrated``); also what ``validate`` calls when it
is given no profile.  Profiles are cached per machine, backend, model and settings under
``$INFER_OS_CACHE`` (default ``~/.cache/infer-os``)/calibration.

Bounds of ``infer-os calibrate``, checked before any work (exit 2 naming the flag): ``--threads``
1 to 1024, ``--block-tokens`` 1 to 4096, ``--kv-quant-group`` 8 to 4096 (a scenario's
``engine.kv_quant_group`` starts at 8 too; a group need not divide the block: a short last group
is padded), ``--budget-s`` 0.1 to 86400 (default: none, the whole grid), ``--retries`` 0 to 5
(default 1: ``adapters.calibration.grid``); ``--out`` a file that can be written.  The profile is
written whole or not at all (a temporary file, then ``os.replace``): Ctrl-C or SIGTERM leaves no
partial profile, and the CLI's ``main`` ends the command with status 130 / 143 and one line.

This module imports torch only when a calibration runs (the CLI registers it without torch).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import time
from pathlib import Path

from adapters.calibration.checks import BACKENDS, check_args, check_model, check_out, write_profile
from adapters.calibration.grid import busy_warning
from adapters.calibration.grid import info as _info
from sim.config.paths import cache_folder
from sim.costs.calibrated import (
    CalibrationProfile,
    ExecutorLayout,
    dump_calibration,
    load_calibration,
)
from sim.errors import UserError


def cache_dir() -> Path:
    return cache_folder("calibration")


def calibrate(model: str, *, backend: str = "torch", device: str = "auto",
              dtype: str = "float32", kv_dtype: str = "float16", threads: int | None = None,
              block_tokens: int = 64, group: int = 64, budget_s: float | None = None,
              progress: bool = True, retries: int = 1) -> CalibrationProfile:
    """Time the ``backend`` executor for ``model`` (a preset, .gguf or HF directory) and fit.
    ``budget_s``: seconds of timing after which the grid's tail is left out (None: the whole
    grid, the default since 2026-12-05: a 2-minute budget left 18 of ONNX Runtime's 103 points
    out on a 2-core CPU, among them every observed prompt).  ``retries``: passes over the grid
    after the first while its fit reads busy (``adapters.calibration.grid``; none with a
    budget)."""
    import numpy as np
    import torch

    from adapters.calibration import bench
    from adapters.calibration.grid import time_grid
    from adapters.calibration.step_tail import (
        growth_in_prefills,
        pass_prices_in_steps,
        quantize_in_steps,
        shift_in_steps,
        step_tail_costs,
    )
    from adapters.model.loading import describe_device, load_shared, resolve_device, resolve_dtype
    from sim.config.model_spec import resolve_model

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    spec = resolve_model(model)
    loaded, _ = load_shared(model, "random", dtype, device)
    sb = bench.StepBench(loaded, spec, resolve_dtype(kv_dtype), block_tokens, group,
                         backend=backend)
    prims = bench.primitives(dev, resolve_dtype(dtype))
    points = bench.grid(spec)
    # the budget is the grid's: loading the model and building the bench (an ONNX export and
    # its sessions, a minute the first time) do not spend it (measured 2026-12-05: a first ort
    # calibration stopped at 42 of 92 points, and its validation read 15 / 30 / 10 % off where
    # one of all 92 read 1.5 / 5.9 / 2.2 %); a fit that reads busy times the grid again
    with torch.inference_mode():
        coef, stats = time_grid(sb, points, budget_s, progress, retries)
        sb.offload_copy()
        tail = step_tail_costs(sb)
        (retier_check, retier_row, retier_multi), (warm_check, warm_row, warm_multi) = \
            tail["retier"], tail["retier_warm"]
        ngram_call, ngram_next_call, ngram, ngram_compare, ngram_hit = tail["ngram"]
        obs_check, obs_row, obs_multi = tail["retier_observed"]
        verify_check, verify_row = tail["retier_verify"]
        growth = growth_in_prefills(sb)
        # the check right after a forward, over one row: what a filled block's step pays besides
        quant = {k: float(np.median(v)) for k, v in quantize_in_steps(
            sb, retier_check + retier_row).items()}
        shift, shift_pass = shift_in_steps(sb, warm_check + warm_row)  # the check before a forward
        passes = pass_prices_in_steps(sb, warm_check + warm_row, shift, quant)
        # timed as the speed check times them: on a bench built as it builds its own (a
        # fresh executor, as a measured run has; the grid's warm one ran them 4-5 % faster)
        ref_bench = _reference_bench(backend, model, dtype, device, kv_dtype, block_tokens, group)
        _, reference = bench.reference_seconds(ref_bench)
    m = sb.m
    device_name = describe_device(dev) if backend == "torch" else sb.ex.device_label
    return CalibrationProfile(
        backend=backend, device=device_name, machine=bench.machine_fingerprint(dev, backend),
        model=model, dtype=dtype, kv_dtype=kv_dtype, threads=torch.get_num_threads(),
        block_tokens=block_tokens, kv_quant_group=group, primitives=prims,
        layout=ExecutorLayout(batch=sb.batch_layout),
        coefficients={name: float(c) for name, c in zip(bench.coefficient_names(), coef)},
        quantize_s_per_value=quant, pass_quantize_s_per_value=passes,
        copy_bytes_per_s=float(np.median(m.copy_bytes_per_s)),
        shift_bytes_per_s=shift, shift_s_per_pass=shift_pass,
        alloc_s=prims["alloc_4mib_s"] / 2, alloc_bytes_per_s=(1 << 22) / prims["alloc_4mib_s"],
        draft_ngram_s_per_token=ngram, draft_ngram_s_per_call=ngram_call,
        draft_ngram_s_per_next_call=ngram_next_call, draft_ngram_s_per_compare=ngram_compare,
        draft_ngram_s_per_hit=ngram_hit,
        retier_s_per_check=retier_check, retier_s_per_row=retier_row,
        retier_s_multi_row=retier_multi, retier_warm_s_per_check=warm_check,
        retier_warm_s_per_row=warm_row, retier_warm_s_multi_row=warm_multi,
        retier_observed_s_per_check=obs_check, retier_observed_s_per_row=obs_row,
        retier_observed_s_multi_row=obs_multi, retier_verify_s_per_check=verify_check,
        retier_verify_s_per_next_row=verify_row, retier_growth_s=growth[False][0],
        retier_growth_s_per_next_row=growth[False][1], retier_observed_growth_s=growth[True][0],
        retier_observed_growth_s_per_next_row=growth[True][1], reference_s=reference,
        fit=stats,
        seconds=time.perf_counter() - t_start)


def cache_key(model: str, device: str, dtype: str, kv_dtype: str, threads: int | None,
              block_tokens: int, group: int, backend: str = "torch") -> str:
    import torch

    from adapters.calibration import bench
    from adapters.model.loading import resolve_device

    n = threads or torch.get_num_threads()
    dev = resolve_device(device)  # "auto" and what it resolves to share a profile
    fingerprint = bench.machine_fingerprint(dev, backend)
    text = "|".join(map(str, (backend, bench.VERSION, fingerprint, model, dev.type, dtype,
                              kv_dtype, n, block_tokens, group)))
    name = Path(model).stem if Path(model).exists() else model
    return f"{backend}-{name}-{dtype}-t{n}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def for_scenario(scn, base_dir: Path, progress: bool = True,
                 backend: str = "torch") -> tuple[CalibrationProfile, Path]:
    """The cached profile for the scenario's model and backend settings, calibrating first if
    there is none (``validate`` without ``--profile``)."""
    be, model = scn.backend, _model_path(scn, base_dir)
    args = (model, be.device, be.dtype, be.kv_dtype, be.threads, scn.engine.block_tokens,
            scn.engine.kv_quant_group, backend)
    path = cache_dir() / f"{cache_key(*args)}.yaml"
    if path.exists():
        return load_calibration(path), path
    _info(f"calibrating the {backend} backend for {model} (cached in {path})")
    profile = calibrate(model, backend=backend, device=be.device, dtype=be.dtype,
                        kv_dtype=be.kv_dtype, threads=be.threads,
                        block_tokens=scn.engine.block_tokens, group=scn.engine.kv_quant_group,
                        progress=progress)
    write_profile(path, dump_calibration(profile))
    return profile, path


def _model_path(scn, base_dir: Path) -> str:
    from adapters.model.loading import resolve_spec

    return resolve_spec(scn.model.spec, base_dir)


def speed_check(profile: CalibrationProfile, scn, base_dir: Path,
                backend: str = "torch") -> float:
    """How much slower this machine runs now than when ``profile`` was fitted: a few of the
    calibration's steps re-timed twice (about 2 s), now over as the calibration timed them
    (``reference_s``), median.  It is not measured over predicted: that ratio would carry the fit's
    own error at those few steps into every prediction (it did: 3-6 % low).  On a shared
    machine whose speed drifts by tens of per cent over minutes (other tenants), ``validate``
    scales its prediction by this factor, measured just before and after each measured run, and
    reports it (``conditioned_on.machine_speed``)."""
    import numpy as np
    import torch

    from adapters.calibration import bench
    from sim.config.model_spec import resolve_model
    from sim.costs.calibrated import CalibratedModel

    be = scn.backend
    if be.threads:
        torch.set_num_threads(be.threads)
    model = _model_path(scn, base_dir)
    spec = resolve_model(model)
    sb = _reference_bench(backend, model, be.dtype, be.device, be.kv_dtype,
                          profile.block_tokens, profile.kv_quant_group)
    with torch.inference_mode():  # each point twice: the median of 6 ratios resists one slow run
        features, seconds = bench.reference_seconds(sb)
    if len(profile.reference_s) == len(seconds):
        then = np.array(profile.reference_s)  # the same steps, as the calibration timed them
    else:  # an older or hand-written profile: against the fitted model
        then = np.array(features) @ CalibratedModel(profile, spec).coef
    return float(np.median(np.array(seconds) / then))


@functools.lru_cache(maxsize=2)
def _reference_bench(backend: str, model: str, dtype: str, device: str, kv_dtype: str,
                     block_tokens: int, group: int):
    """The speed check's bench, made once per process and kept warm: a new one (new ONNX
    Runtime sessions, new buffers) runs its first steps slower than the next ones."""
    from adapters.calibration import bench
    from adapters.model.loading import load_shared, resolve_dtype
    from sim.config.model_spec import resolve_model

    loaded, _ = load_shared(model, "random", dtype, device)
    sb = bench.StepBench(loaded, resolve_model(model), resolve_dtype(kv_dtype), block_tokens,
                         group, backend=backend)
    # new ONNX Runtime sessions: their first runs grow the arena (a no-op in torch)
    sb.ex.warm_up(batch=2, past_tokens=200, new_tokens=1, prompt_tokens=96)
    # the reference steps once, untimed: in a new process the first check read 1.06 where the
    # next five read 1.01-1.02 (2026-12-05), and that first one scaled the first variant's
    # prediction; the calibration's reference is timed on a bench warmed the same way
    import torch

    with torch.inference_mode():
        bench.reference_seconds(sb)
    return sb


class TorchCalibrator:
    """What ``validate`` loads from the ``infer_os.calibrators`` entry point of a backend."""

    backend = "torch"

    @classmethod
    def for_scenario(cls, scn, base_dir: Path,
                     progress: bool = True) -> tuple[CalibrationProfile, Path]:
        return for_scenario(scn, base_dir, progress, backend=cls.backend)

    @classmethod
    def speed_check(cls, profile: CalibrationProfile, scn, base_dir: Path) -> float:
        return speed_check(profile, scn, base_dir, backend=cls.backend)


class OrtCalibrator(TorchCalibrator):
    """``ort`` (ONNX Runtime's CPU provider): the same grid through the ort executor."""

    backend = "ort"


class _AcceleratorCalibrator(TorchCalibrator):
    """``ort-migraphx`` / ``ort-vitisai``: exit 3 naming the execution provider where it is
    missing; where it is present, calibrating on it is not implemented (the grid times the CPU
    provider's sessions), which is said plainly."""

    @classmethod
    def for_scenario(cls, scn, base_dir: Path, progress: bool = True):
        from adapters.ort_backend import providers as op

        op.check_provider(op.BACKEND_PROVIDERS[cls.backend], cls.backend)
        raise UserError(f"calibrating backend {cls.backend!r} on its device is not implemented "
                        "yet: pass --cost-model roofline, or --profile with a profile made "
                        "elsewhere", field="--backend")


class MigraphxCalibrator(_AcceleratorCalibrator):
    backend = "ort-migraphx"


class VitisaiCalibrator(_AcceleratorCalibrator):
    backend = "ort-vitisai"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calibrate`` on the CLI's subparsers."""
    p = subparsers.add_parser("calibrate", help="time the real executor on this machine and fit "
                              "the calibrated cost model's profile")
    p.add_argument("--backend", required=True, help=f"one of: {', '.join(BACKENDS)}")
    p.add_argument("--model", default="smollm2-135m", metavar="NAME_OR_PATH",
                   help="preset, .gguf file or HF directory (default: smollm2-135m)")
    p.add_argument("--out", metavar="PROFILE.yaml", help="write the profile here (default: the "
                   "per-machine cache; the path is printed)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--kv-dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--threads", default=None, help="torch CPU threads, 1 to 1024 (default: "
                   "torch's)")
    p.add_argument("--block-tokens", default=64, help="tokens per KV block, 1 to 4096 "
                   "(default 64)")
    p.add_argument("--kv-quant-group", default=64, help="values per INT8/INT4/INT2 scale group, "
                   "8 to 4096 (default 64)")
    p.add_argument("--budget-s", default=None,
                   help="seconds of timing, 0.1 to 86400, after which the grid's tail is left "
                   "out (default: the whole grid, about 3.7 minutes with torch and 4 with ONNX "
                   "Runtime on a 2-core CPU; loading the model and exporting it to ONNX do not "
                   "count)")
    p.add_argument("--retries", default=1, help="0 to 5: times the grid is timed again while "
                   "its fit's median error reads like a busy machine (above 5 %%), keeping the "
                   "pass that fits best (default 1; none with --budget-s)")
    # the CLI's main turns SIGTERM into exit 143 with one line for commands that ask for it
    p.set_defaults(func=run, stop_on_sigterm=True)
    return p


def run(args: argparse.Namespace) -> int:
    check_args(args)
    check_model(args.model)
    try:
        import torch  # noqa: F401
    except ImportError:
        from sim.errors import BackendUnavailable
        extras = "torch" if args.backend == "torch" else "torch,onnx"
        raise BackendUnavailable(f"calibrating the {args.backend} backend needs the Python "
                                 f"package torch (pip install 'infer-os[{extras}]')") from None
    from adapters.model.loading import resolve_device

    resolve_device(args.device)  # exit 3 now when cuda is asked for and absent
    if args.backend == "ort":
        _check_ort(args)
    settings = (args.model, args.device, args.dtype, args.kv_dtype, args.threads,
                args.block_tokens, args.kv_quant_group, args.backend)
    out = Path(args.out) if args.out else cache_dir() / f"{cache_key(*settings)}.yaml"
    check_out(out)
    budget = "the whole grid" if args.budget_s is None else f"budget {args.budget_s:g} s"
    _info(f"calibrating the {args.backend} backend for {args.model} ({budget}; the profile "
          f"goes to {out})")
    profile = calibrate(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                        kv_dtype=args.kv_dtype, threads=args.threads,
                        block_tokens=args.block_tokens, group=args.kv_quant_group,
                        budget_s=args.budget_s, retries=args.retries)
    write_profile(out, dump_calibration(profile))
    fit = profile.fit
    _info(f"calibrated in {profile.seconds:.0f} s on {profile.device}: {fit.num_points} steps, "
          f"|error| median {fit.median_abs_error:.1%}, max {fit.max_abs_error:.1%}"
          + (f"; held out: median {fit.holdout_median_abs_error:.1%}, max "
             f"{fit.holdout_max_abs_error:.1%}" if fit.holdout_median_abs_error is not None
             else ""))
    if (warning := busy_warning(fit.median_abs_error)) is not None:
        _info(f"infer-os: warning: {warning}")
    print(out)
    return 0


def _check_ort(args: argparse.Namespace) -> None:
    """What the ort backend can run: onnxruntime installed, float32 weights on the CPU."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        from sim.errors import BackendUnavailable
        raise BackendUnavailable("calibrating the ort backend needs onnxruntime and onnxscript "
                                 "(pip install 'infer-os[onnx]')") from None
    if args.dtype != "float32":
        raise UserError("the ONNX Runtime backends run float32 weights only", field="--dtype")
    if args.device == "cuda":
        raise UserError("backend 'ort' runs on the CPU", field="--device")
    if args.kv_dtype == "bfloat16":
        raise UserError("the ort backend keeps K/V in float16 or float32", field="--kv-dtype")
