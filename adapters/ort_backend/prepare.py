"""Model preparation for an execution provider: the float ONNX export turned into the INT8 (QDQ)
or BF16 model a provider compiles, cached on disk.  The graph's inputs and outputs (names, dtypes,
shapes) stay those of the export, so an executor feeds a prepared model as it feeds the export.

- ``int8``: static QDQ quantization with ``onnxruntime.quantization.quantize_static``,
  calibrated (MinMax) on the caller's feeds.  As Ryzen AI documents for the NPU
  (docs/model_quantization.rst, https://ryzenai.docs.amd.com/en/latest/model_quantization.html):
  activations uint8 with symmetric ranges (``ActivationSymmetric``), weights int8 symmetric, here
  per output channel.  Only MatMul/Gemm are quantized (the linear layers and the attention
  products); norms, softmax, RoPE and masking stay float: quantizing every op put the mask's
  large negative fill into a per-tensor range and left the tiny test model's logits uncorrelated
  (relative error 1.1 against 0.1).  Scales are float, not the power-of-two scales of AMD Quark's
  XINT8 preset; a flow that needs those needs Quark.  For the CPU EP on an x86 CPU without VNNI
  the weights are quantized to 7 bits (``reduce_range``, as onnxruntime advises for such CPUs:
  its uint8 x int8 kernels there add products in pairs into 16 bits, which saturate; on an AVX2
  EPYC the test model's logits read 0.25 off with 8-bit weights, within 0.2 with 7).
- ``bf16``: the Cast form Ryzen AI's BF16 compile (VAIML) takes, which Quark writes with
  ``BF16QDQToCast`` ("replace QuantizeLinear/DeQuantizeLinear ops with Cast ops"): every float
  weight of a MatMul, Gemm or Gather is stored as bfloat16 (rounded to nearest, ties to even) and
  cast back to float where it is read; every float activation into a MatMul or Gemm passes a
  Cast to bfloat16 and back.  Everything else stays float32.  The CPU EP runs it (its Cast
  supports bfloat16), so BF16's effect on quality can be measured on any machine.

Prepared models live under ``$INFER_OS_CACHE/onnx-prepared`` (default
``~/.cache/infer-os/onnx-prepared``), one folder per SHA-256 of the export (its path, sizes and
modification times), the mode, the options, the calibration feeds and the versions; weights in
``model.onnx.data`` beside ``model.onnx``; written under a temporary name and renamed when done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from adapters.ort_backend.export import cached_folder
from sim.config.paths import cache_folder

PREPARE_VERSION = 1  # bump when a prepared graph changes
MODES = ("none", "int8", "bf16")
INT8_OPTIONS = {"format": "QDQ", "activations": "QUInt8", "weights": "QInt8", "per_channel": True,
                "activation_symmetric": True, "calibration": "MinMax", "ops": ["MatMul", "Gemm"]}
BF16_OPTIONS = {"weights_of": ["MatMul", "Gemm", "Gather"], "activations_into": ["MatMul", "Gemm"]}
Feeds = dict[str, np.ndarray]


def prepared_root() -> Path:
    return cache_folder("onnx-prepared")


def saturating_cpu() -> bool:
    """An x86 CPU without VNNI (``avx512_vnni`` / ``avx_vnni`` absent from /proc/cpuinfo), where
    onnxruntime's CPU uint8 x int8 products saturate; False where that cannot be read."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        return "vnni" not in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def prepare_model(export_path: Path, mode: str, *, calibration: list[Feeds] | None,
                  cache_root: Path | None = None, reduce_range: bool | None = None) -> Path:
    """The model at ``export_path`` prepared for ``mode`` ("none": ``export_path`` itself) ->
    where the prepared ``model.onnx`` is.  ``calibration``: the feeds INT8 calibrates its
    activation ranges on (ignored otherwise).  ``reduce_range``: INT8 weights in 7 bits (None:
    where ``saturating_cpu``; pass False for a model an accelerator runs).  A second call with
    the same arguments finds the cached model and returns its path without preparing
    anything."""
    if mode not in MODES:
        raise ValueError(f"unknown preparation {mode!r} (choose from {', '.join(MODES)})")
    if mode == "none":
        return export_path
    if mode == "int8" and not calibration:
        raise ValueError("int8 preparation needs calibration feeds")
    if reduce_range is None:
        reduce_range = saturating_cpu()
    key = prepare_key(export_path, mode, calibration if mode == "int8" else None,
                      reduce_range and mode == "int8")

    def build(folder: Path) -> None:
        if mode == "int8":
            _quantize_int8(export_path, folder / "model.onnx", calibration or [], reduce_range)
        else:
            _convert_bf16(export_path, folder / "model.onnx")

    return cached_folder(cache_root or prepared_root(), key, build)[0]


def prepare_key(export_path: Path, mode: str, calibration: list[Feeds] | None,
                reduce_range: bool = False) -> str:
    """SHA-256 over the export's files (resolved path, size, mtime), the mode and its options,
    the calibration feeds (names, shapes, dtypes, bytes) and the versions."""
    files = [export_path, export_path.with_name(export_path.name + ".data")]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
             for p in files if p.exists()]
    options = {"int8": {**INT8_OPTIONS, **({"reduce_range": True} if reduce_range else {})},
               "bf16": BF16_OPTIONS}.get(mode)
    meta = {"version": PREPARE_VERSION, "files": stats, "mode": mode, "options": options,
            "onnxruntime": ort.__version__, "onnx": onnx.__version__}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for feeds in calibration or []:
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            h.update(f"{name}:{arr.shape}:{arr.dtype}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:32]


# -- INT8 -----------------------------------------------------------------------------------------
def _quantize_int8(src: Path, dst: Path, calibration: list[Feeds], reduce_range: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> Feeds | None:
            return next(self.feeds, None)

    quantize_static(
        str(src), str(dst), FeedReader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_OPTIONS["ops"], per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
        reduce_range=reduce_range,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


# -- BF16 -----------------------------------------------------------------------------------------
def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the bit patterns (uint16) of the nearest bfloat16, ties to even; NaN stays a
    NaN.  bfloat16 is the top half of a float32, so this rounds away the low 16 bits."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(x), (u >> 16) | 0x40, rounded).astype(np.uint16)


def _convert_bf16(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))  # weights too
    typed = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    elem = {v.name: v.type.tensor_type.elem_type
            for v in [*typed.graph.input, *typed.graph.value_info, *typed.graph.output]}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weight_casts: list[onnx.NodeProto] = []
    body: list[onnx.NodeProto] = []
    cast_of: dict[str, str] = {}  # float weight -> its float32 read of the bfloat16 copy
    for node in graph.node:
        for i, name in enumerate(node.input):
            tensor = inits.get(name)
            if tensor is not None and tensor.data_type == TensorProto.FLOAT and (
                    node.op_type in ("MatMul", "Gemm") or (node.op_type == "Gather" and i == 0)):
                if name not in cast_of:
                    cast_of[name] = _bf16_weight(graph, tensor, weight_casts)
                node.input[i] = cast_of[name]
            elif (tensor is None and name and node.op_type in ("MatMul", "Gemm")
                  and elem.get(name) == TensorProto.FLOAT):
                node.input[i] = _bf16_round_trip(name, f"{node.name or node.op_type}.{i}", body)
        body.append(node)
    used = {x for n in body for x in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in cast_of or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend([*weight_casts, *body])
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + ".data")


def _bf16_weight(graph: onnx.GraphProto, tensor: onnx.TensorProto,
                 casts: list[onnx.NodeProto]) -> str:
    """Add a bfloat16 copy of ``tensor`` and a Cast back to float; -> the Cast's output."""
    values = numpy_helper.to_array(tensor)
    stored = f"bf16/{tensor.name}"
    graph.initializer.append(helper.make_tensor(stored, TensorProto.BFLOAT16, values.shape,
                                                bf16_bits(values).tobytes(), raw=True))
    casts.append(helper.make_node("Cast", [stored], [f"{stored}/f32"], name=f"{stored}/cast",
                                  to=TensorProto.FLOAT))
    return f"{stored}/f32"


def _bf16_round_trip(name: str, at: str, body: list[onnx.NodeProto]) -> str:
    """Cast ``name`` to bfloat16 and back before the node ``at``; -> the rounded tensor."""
    mid, out = f"bf16/{at}/{name}", f"bf16/{at}/{name}/f32"
    body.append(helper.make_node("Cast", [name], [mid], name=f"{mid}/to", to=TensorProto.BFLOAT16))
    body.append(helper.make_node("Cast", [mid], [out], name=f"{mid}/from", to=TensorProto.FLOAT))
    return out
