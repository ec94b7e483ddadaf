"""The provider-specific side of the ONNX Runtime backends: which execution provider a backend
needs, whether this onnxruntime has it, its provider options, session options and shapes.

Providers (the real ones cannot exist on a machine without their hardware and onnxruntime build,
so only the CPU path runs in tests; the option dicts are built and checked everywhere):

- ``ort``: ``CPUExecutionProvider``, no options.
- ``ort-migraphx``: ``MIGraphXExecutionProvider`` (AMD GPUs, ROCm).  Options ``device_id``,
  ``migraphx_fp16_enable`` ("1"/"0") and a compiled-model cache: ``migraphx_model_cache_dir``
  from onnxruntime 1.23 (microsoft/onnxruntime#25338, ROCm/onnxruntime#105); before that one
  ``.mxr`` file per session through ``migraphx_save_compiled_model`` / ``migraphx_save_model_path``
  and ``migraphx_load_compiled_model`` / ``migraphx_load_model_path`` (the C struct
  https://onnxruntime.ai/docs/api/c/struct_ort_m_i_graph_x_provider_options.html).  An option a
  build does not know fails the EP and ONNX Runtime silently falls back to the CPU
  (microsoft/onnxruntime#25379), which ``make_session`` turns into an error.  MIGraphX compiles
  per input shape and recompiles when a shape changes ("input shapes are different, needs to
  re-parse onnx and re-compile the program", migraphx_execution_provider.cc, quoted in
  lightvector/KataGo#1235): hence ``static_tokens``.
- ``ort-vitisai``: ``VitisAIExecutionProvider`` (the Ryzen AI NPU, from AMD's Ryzen AI Software).
  Options (https://ryzenai.docs.amd.com/en/latest/modelrun.html, amd/ryzen-ai-documentation
  docs/modelrun.rst): ``config_file`` (mandatory in early releases, which ship
  ``voe-4.0-win_amd64/vaip_config.json``; the compiler options of a BF16 compile in recent ones);
  ``cache_dir`` + ``cache_key``, the compiled model's folder (early releases and ONNX Runtime's
  docs before microsoft/onnxruntime#24739 spell them ``cacheDir`` / ``cacheKey``; the VAIP sources
  read both, ``get_provider_option_local({"cache_dir", "cacheDir"})`` in
  vaip/src/pass_context_imp.cpp, so both are passed); for INT8 models ``xclbin`` (the NPU
  overlay, from ``$XLNX_VART_FIRMWARE`` when set, else left to the EP's target discovery) and
  ``enable_cache_file_io_in_mem=0`` so the compiled model is written to ``cache_dir``.  The NPU
  compiles a whole model with fixed shapes when the session is created, so a static session is
  made with ``fixed_dims`` (ONNX Runtime's free-dimension overrides), one per shape bucket.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort

from sim.config.paths import cache_folder, resolve_path
from sim.config.scenario import BackendConfig, Scenario
from sim.errors import BackendUnavailable, UserError

CPU_EP = "CPUExecutionProvider"
MIGRAPHX_EP = "MIGraphXExecutionProvider"
VITISAI_EP = "VitisAIExecutionProvider"
BACKEND_PROVIDERS = {"ort": CPU_EP, "ort-migraphx": MIGRAPHX_EP, "ort-vitisai": VITISAI_EP}
BACKEND_DEVICE_KIND = {"ort": "cpu", "ort-migraphx": "gpu", "ort-vitisai": "npu"}
STATIC_PROVIDERS = (MIGRAPHX_EP, VITISAI_EP)  # compile per input shape
# "auto" preparation per provider: Ryzen AI compiles transformers from BF16 models (CNNs from
# INT8 or BF16; docs/model_quantization.rst); MIGraphX and the CPU run the float export as is
DEFAULT_QUANTIZE = {CPU_EP: "none", MIGRAPHX_EP: "none", VITISAI_EP: "bf16"}
MIN_STATIC_TOKENS = 64  # smallest power-of-two bucket
_INSTALL_HINT = {
    MIGRAPHX_EP: "install ROCm with MIGraphX and an onnxruntime built with it in place of "
                 "onnxruntime (pip package onnxruntime-migraphx, AMD's wheels at "
                 "repo.radeon.com, or a source build with --use_migraphx)",
    VITISAI_EP: "install AMD Ryzen AI Software (NPU driver and its onnxruntime-vitisai build, "
                "https://ryzenai.docs.amd.com/en/latest/inst.html) and run from its "
                "environment",
}


# -- which provider, and is it here --------------------------------------------------------------
def check_provider(provider: str, backend: str) -> None:
    """Raise ``BackendUnavailable`` (exit status 3) unless this onnxruntime has ``provider``."""
    available = ort.get_available_providers()
    if provider in available:
        return
    hint = _INSTALL_HINT.get(provider, "install an onnxruntime build with it")
    raise BackendUnavailable(
        f"backend {backend!r} needs the ONNX Runtime execution provider {provider}, which "
        f"onnxruntime {ort.__version__} here does not have (available: {', '.join(available)}); "
        f"{hint}")


def quantize_mode(provider: str, scn: Scenario) -> str:
    """How the export is prepared for ``provider``: ``backend.ort_quantize``, or the provider's
    default when that is "auto"."""
    mode = scn.backend.ort_quantize
    return DEFAULT_QUANTIZE[provider] if mode == "auto" else mode


# -- shapes ---------------------------------------------------------------------------------------
def is_static_shaped(provider: str, scn: Scenario) -> bool:
    """Whether past/context are laid out at bucketed lengths: ``backend.ort_static_shapes``, or
    by default for the providers that compile per input shape (MIGraphX, VitisAI)."""
    forced = scn.backend.ort_static_shapes
    return provider in STATIC_PROVIDERS if forced is None else forced


def static_tokens(n: int, scn: Scenario, *, provider: str) -> int:
    """The length a past/context of ``n`` tokens is laid out at (padded, the padding masked):
    with static shapes the next multiple of ``backend.ort_shape_bucket``, or the next power of
    two >= 64, so serving up to N tokens compiles ceil(N / bucket) or ~log2(N / 64) + 1 shapes;
    ``n`` itself without.  Always >= n, non-decreasing in n, idempotent (a laid-out length is
    its own bucket); an empty past stays empty (0)."""
    if n <= 0 or not is_static_shaped(provider, scn):
        return max(n, 0)
    bucket = scn.backend.ort_shape_bucket
    if bucket:
        return -(-n // bucket) * bucket
    return max(MIN_STATIC_TOKENS, 1 << (n - 1).bit_length())


# -- options --------------------------------------------------------------------------------------
def cache_dir(scn: Scenario, name: str) -> Path:
    """Where provider ``name`` ("vitisai", "migraphx") keeps compiled models:
    ``backend.ort_cache_dir`` or ``$INFER_OS_CACHE`` (default ``~/.cache/infer-os``), then
    ``name``."""
    if scn.backend.ort_cache_dir:
        return Path(scn.backend.ort_cache_dir).expanduser() / name
    return cache_folder(name)


def vitisai_config_file(be: BackendConfig, base_dir: Path | None = None) -> Path:
    """The VitisAI config file: ``backend.vitisai_config`` (resolved by the scenario path rule,
    ``sim.config.paths.resolve_path``, against ``base_dir``, the scenario's folder) or Ryzen AI's
    own ``vaip_config.json``; ``UserError`` if it is missing."""
    field = "backend.vitisai_config"
    if be.vitisai_config:
        path = resolve_path(be.vitisai_config, base_dir)
    else:
        install = os.environ.get("RYZEN_AI_INSTALLATION_PATH")
        if not install:
            raise UserError("not set, and RYZEN_AI_INSTALLATION_PATH (set by the Ryzen AI "
                            "installer) is not either: name the VitisAI EP's config file, "
                            "e.g. vaip_config.json", field=field)
        path = Path(install) / "voe-4.0-win_amd64" / "vaip_config.json"
    if not path.is_file():
        raise UserError(f"VitisAI config file {path} does not exist", field=field)
    return path


def provider_options(provider: str, scn: Scenario, *, cache_key: str,
                     base_dir: Path | None = None) -> dict[str, str]:
    """The provider options of ``provider`` for ``scn`` (values are strings, as ONNX Runtime
    takes them); compiled models are cached under ``cache_key`` (a key of the prepared model, and
    of the shape bucket for a static session).  Creates the cache folder."""
    if provider == VITISAI_EP:
        return _vitisai_options(scn, cache_key, base_dir)
    if provider == MIGRAPHX_EP:
        return _migraphx_options(scn, cache_key)
    return {}


def _vitisai_options(scn: Scenario, cache_key: str, base_dir: Path | None) -> dict[str, str]:
    folder = cache_dir(scn, "vitisai")
    folder.mkdir(parents=True, exist_ok=True)
    options = {"config_file": str(vitisai_config_file(scn.backend, base_dir)),
               "cache_dir": str(folder), "cache_key": cache_key,
               "cacheDir": str(folder), "cacheKey": cache_key}  # early releases' names
    if quantize_mode(VITISAI_EP, scn) == "int8":
        options["enable_cache_file_io_in_mem"] = "0"  # else an INT8 compile stays in memory
        if os.environ.get("XLNX_VART_FIRMWARE"):  # Ryzen AI's variable for the NPU overlay
            options["xclbin"] = os.environ["XLNX_VART_FIRMWARE"]
    return options


def _migraphx_options(scn: Scenario, cache_key: str) -> dict[str, str]:
    # device 0 of those HIP sees (HIP_VISIBLE_DEVICES picks another).  INT8 comes as a QDQ
    # model that MIGraphX reads as is, not through migraphx_int8_enable (MIGraphX's own
    # quantization, which wants its calibration table).
    options = {"device_id": "0",
               "migraphx_fp16_enable": "1" if scn.backend.dtype == "float16" else "0"}
    folder = cache_dir(scn, "migraphx")
    folder.mkdir(parents=True, exist_ok=True)
    if ort_version() >= (1, 23):  # a folder keyed by the EP (model and input shapes)
        options["migraphx_model_cache_dir"] = str(folder)
        return options
    mxr = folder / f"{cache_key}.mxr"  # one compiled program per session
    options |= {"migraphx_save_compiled_model": "1", "migraphx_save_model_path": str(mxr)}
    if mxr.is_file():
        options |= {"migraphx_load_compiled_model": "1", "migraphx_load_model_path": str(mxr)}
    return options


def ort_version() -> tuple[int, int]:
    """(major, minor) of this onnxruntime."""
    match = re.match(r"(\d+)\.(\d+)", ort.__version__)
    return (int(match[1]), int(match[2])) if match else (0, 0)


# -- sessions -------------------------------------------------------------------------------------
def session_options(scn: Scenario,
                    fixed_dims: Mapping[str, int] | None = None) -> ort.SessionOptions:
    """Threads from ``backend.threads`` (default: ONNX Runtime's), every graph optimization, and
    ``fixed_dims`` (symbolic dimension -> size, e.g. {"batch": 1, "past_tokens": 128}) fixed for
    the session's life, for a provider that compiles the whole model once."""
    options = base_options(scn.backend.threads)
    for name, size in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, size)
    return options


def base_options(threads: int | None) -> ort.SessionOptions:
    """Every graph optimization; ``threads`` intra-op threads (default: ONNX Runtime's); and
    worker threads that block when idle instead of spinning: the executor interleaves session
    runs with torch work (staging the past, drafts), and a process can hold several sessions
    (``validate``'s speed check beside the measured run), whose spinning threads took a core
    from the running one here (decode 40 ms -> 50 ms on SmolLM2-135M, 2 cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model_path: Path, provider: str, scn: Scenario, *, cache_key: str,
                 base_dir: Path | None = None,
                 fixed_dims: Mapping[str, int] | None = None) -> ort.InferenceSession:
    """A session on ``provider`` with the CPU EP behind it for the nodes the provider does not
    take.  ``BackendUnavailable`` if this onnxruntime lacks the provider or the provider failed
    to start (ONNX Runtime would otherwise run everything on the CPU without saying so)."""
    backend = next((b for b, p in BACKEND_PROVIDERS.items() if p == provider), provider)
    check_provider(provider, backend)
    if fixed_dims:  # a compiled model per shape
        cache_key += "-" + "-".join(f"{k}{v}" for k, v in sorted(fixed_dims.items()))
    providers: list = [CPU_EP]
    if provider != CPU_EP:
        options = provider_options(provider, scn, cache_key=cache_key, base_dir=base_dir)
        providers = [(provider, options), CPU_EP]
    session = ort.InferenceSession(str(model_path), session_options(scn, fixed_dims),
                                   providers=providers)
    require_active(session, provider, backend)
    return session


def require_active(session: ort.InferenceSession, provider: str, backend: str) -> None:
    """``BackendUnavailable`` unless ``provider`` is among the session's providers."""
    active = session.get_providers()
    if provider not in active:
        raise BackendUnavailable(
            f"backend {backend!r}: the execution provider {provider} failed to start and "
            f"onnxruntime {ort.__version__} fell back to {', '.join(active)} (see its log "
            "above: a missing device or driver, or an option this build does not know)")
