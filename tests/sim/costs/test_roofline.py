"""Roofline work of a tiny made-up model, hand-computed; step times through the roofline and
coefficient cost models and the cost-model executor, alone and sharing a memory bus."""

from __future__ import annotations

import pytest
import simpy

from policies import Placement
from sim.config.hardware import HardwareProfile
from sim.config.model_spec import ModelSpec
from sim.config.scenario import CoefficientConfig
from sim.costs.cost_model import CoefficientModel, RooflineModel
from sim.costs.executor import CostModelExecutor
from sim.costs.work import Work, attention_work, ffn_work, head_work
from sim.engine.executor import StepPlan

# 2 layers, hidden 8, 2 query heads and 1 KV head of dim 4, SwiGLU FFN of 16, vocab 32, FP16.
TINY = ModelSpec("tiny", num_layers=2, hidden=8, num_heads=2, num_kv_heads=1, head_dim=4,
                 ffn_hidden=16, vocab=32, tied_embeddings=True, gated_ffn=True,
                 max_context_tokens=64, weight_bits=16.0)

# Parameters, counted from the shapes:
#   attention per layer: Q 8x8 = 64, K 8x4 = 32, V 8x4 = 32, O 8x8 = 64          -> 192
#   FFN per layer: gate 8x16 + up 8x16 + down 16x8 = 3 x 128                      -> 384
#   LM head: 8 x 32                                                               -> 256
#   KV values per token: (K + V) x 1 KV head x dim 4 x 2 layers                   -> 16
# Conventions of sim/costs/work.py: a multiply-add is 2 FLOPs, weights are read once a step,
# activations FP16 (2 B), logits FP32 (4 B), attention 2 x 2 x heads x head_dim FLOPs per
# (query, attended token) pair per layer (QK^T and PV), a dequantized value costs 2 FLOPs,
# attention moves 4 hidden-sized activation vectors per token per layer and the FFN moves
# 2 hidden- and 3 ffn-sized ones; kernels per layer: 5 attention, 4 FFN; 2 for the head.


def test_parameter_counts():
    assert (TINY.attention_params, TINY.ffn_params, TINY.head_params) == (192, 384, 256)
    assert TINY.kv_values_per_token == 16


# One decode token attending to 10 context tokens held at FP16: 10 x 16 values x 2 B = 320 B.
#   FLOPs: projections 2 x 192 x 2 layers = 768; attention 2 x 2 x 2 heads x 4 x 10 pairs
#          x 2 layers = 640                                                          -> 1408
#   bytes: weights 192 x 2 layers x 2 B = 768; KV read 320; KV write 16 values x 2 B = 32;
#          activations 4 x 8 x 2 B x 2 layers = 128                                   -> 1248
# Two tokens (contexts 10 and 6: 16 pairs, 512 B of KV), 40 of the values INT8:
#   FLOPs: 2 x 2 tokens x 192 x 2 = 1536; attention 64 a pair (2 x 2 x 2 x 4, 2 layers)
#          x 16 pairs = 1024; dequant 2 x 40 = 80                                     -> 2640
#   bytes: 768 + 512 + 2 x 32 + 2 x 128 = 1600
# The one-token case with 4.5-bit weights: weights 192 x 2 x 4.5 / 8 = 216 B -> 216 + 480 = 696
@pytest.mark.parametrize(
    ("spec", "num_tokens", "pairs", "kv_read", "dequant", "expected"),
    [
        (TINY, 1, 10, 320, 0, Work(1408, 1248, 10)),
        (TINY, 2, 16, 512, 40, Work(2640, 1600, 10)),
        (TINY.with_weight_bits(4.5), 1, 10, 320, 0, Work(1408, 696, 10)),
    ],
)
def test_attention_work(spec, num_tokens, pairs, kv_read, dequant, expected):
    assert attention_work(spec, num_tokens, pairs, kv_read, dequant) == expected


# FFN, one token: FLOPs 2 x 384 x 2 layers = 1536; bytes: weights 384 x 2 x 2 B = 1536,
#   activations (2 x 8 + 3 x 16) x 2 B x 2 layers = 256 -> 1792; kernels 4 x 2 = 8.
# Two tokens: FLOPs 3072; bytes 1536 + 512 = 2048.
@pytest.mark.parametrize(
    ("num_tokens", "expected"),
    [(1, Work(1536, 1792, 8)), (2, Work(3072, 2048, 8)), (4, Work(6144, 2560, 8))],
)
def test_ffn_work(num_tokens, expected):
    assert ffn_work(TINY, num_tokens) == expected


# Head, one row: FLOPs 2 x 256 = 512; bytes: weights 256 x 2 B = 512, the row's hidden 8 x 2 B =
#   16, its logits 32 x 4 B = 128 -> 656; kernels 2.  Two rows: 1024 FLOPs, 512 + 2 x 144 = 800 B.
@pytest.mark.parametrize(
    ("num_rows", "expected"),
    [(1, Work(512, 656, 2)), (2, Work(1024, 800, 2)), (4, Work(2048, 1088, 2))],
)
def test_head_work(num_rows, expected):
    assert head_work(TINY, num_rows) == expected


# -- made-up hardware ------------------------------------------------------------------------------
def cite(fields: dict) -> dict:
    return {**fields, "sources": {k: "[test] made up" for k, v in fields.items()
                                  if isinstance(v, (int, float))}}


def bus(name: str) -> dict:
    # usable bandwidth 2000 x 0.5 = 1000 B/s
    return cite({"name": name, "capacity_bytes": 1e6, "bandwidth_bytes_per_s": 2000.0,
                 "efficiency": 0.5})


def devices(gpu_memory: str, npu_memory: str) -> list[dict]:
    return [
        # gpu: 3200 x 0.5 = 1600 FLOP/s
        cite({"name": "gpu", "kind": "gpu", "memory": gpu_memory, "peak_flops_per_s": 3200.0,
              "compute_efficiency": 0.5, "launch_overhead_s": 0.001, "command_latency_s": 0.01,
              "alloc_latency_s": 0.005, "alloc_bytes_per_s": 1000.0}),
        # npu: 3000 x 0.5 = 1500 FLOP/s, its DMA reads at most 800 B/s
        cite({"name": "npu", "kind": "npu", "memory": npu_memory, "peak_flops_per_s": 3000.0,
              "compute_efficiency": 0.5, "bandwidth_ceiling_bytes_per_s": 800.0,
              "launch_overhead_s": 0.002, "command_latency_s": 0.02, "alloc_latency_s": 0.01,
              "alloc_bytes_per_s": 500.0}),
    ]


SHARED = HardwareProfile.model_validate({
    "name": "shared", "description": "gpu and npu on one 1000 B/s bus", "host_memory": "dram",
    "memories": [bus("dram")], "devices": devices("dram", "dram")})
SEPARATE = HardwareProfile.model_validate({
    "name": "separate", "description": "gpu and npu on a 1000 B/s bus each", "host_memory": "dram",
    "memories": [bus("dram"), bus("hbm")], "devices": devices("hbm", "dram")})

ON_GPU = Placement("gpu", "gpu", "gpu")
ON_NPU = Placement("npu", "npu", "npu")
SPLIT = Placement("gpu", "gpu", "npu")  # attention on gpu, FFN and head on npu


def decode(placement: Placement, batch: int = 1, **kw) -> StepPlan:
    """Decode plans whose work is hand-computed above (every context at FP16, 32 B a token):
    batch 1: context 10; batch 2: contexts 10 and 6; batch 4: four contexts of 8."""
    pairs, kv_read = {1: (10, 320), 2: (16, 512), 4: (32, 1024)}[batch]
    return StepPlan(phase="decode", request_ids=tuple(range(batch)), num_tokens=batch,
                    num_rows=batch, attended_pairs=pairs, kv_read_bytes=kv_read,
                    kv_dequant_values=0, placement=placement, **kw)


# Whole decode steps (attention + FFN + head):
#   batch 1: FLOPs 1408 + 1536 + 512 = 3456; bytes 1248 + 1792 + 656 = 3696; kernels 20
#   batch 2: FLOPs 2560 + 3072 + 1024 = 6656; bytes 1600 + 2048 + 800 = 4448
#   batch 4: attention FLOPs 2 x 4 tokens x 192 x 2 = 3072 + 64 x 32 pairs = 2048 -> 5120;
#                      bytes 768 + 1024 + 4 x 32 + 4 x 128 = 2432
#            FFN (4 tokens) 6144 FLOPs, 2560 B; head (4 rows) 2048 FLOPs, 512 + 4 x 144 = 1088 B
#     total: FLOPs 5120 + 6144 + 2048 = 13312; bytes 2432 + 2560 + 1088 = 6080
def run_steps(hw: HardwareProfile, *plans: StepPlan, model=None):
    """Run the plans as concurrent SimPy processes from t=0; returns [(device, end_s)] and the
    step results in plan order."""
    env = simpy.Environment()
    executor = CostModelExecutor(hw, model or RooflineModel(hw, TINY))
    log, results = [], [None] * len(plans)

    def proc(i, plan):
        results[i] = yield from executor.execute(env, plan)
        log.append((plan.placement.decode_ffn, env.now))

    for i, plan in enumerate(plans):
        env.process(proc(i, plan))
    env.run()
    return log, results


@pytest.mark.parametrize("hw", [SHARED, SEPARATE], ids=["shared", "separate"])
@pytest.mark.parametrize(
    ("plan", "seconds"),
    [
        # gpu, batch 1, memory-bound: compute 3456 / 1600 = 2.16 s < memory 3696 / 1000 = 3.696 s;
        #   fixed: 20 kernels x 1 ms + one 10 ms handoff into the gpu = 0.03 s
        (decode(ON_GPU), 3.726),
        # gpu, batch 4, compute-bound: compute 13312 / 1600 = 8.32 s > memory 6080 / 1000 = 6.08 s
        (decode(ON_GPU, 4), 8.35),
        # npu, batch 1, memory-bound at its DMA ceiling: compute 3456 / 1500 = 2.304 s < memory
        #   3696 / min(1000, 800) = 4.62 s; fixed: 20 x 2 ms + 20 ms = 0.06 s
        (decode(ON_NPU), 4.68),
        # npu, batch 2: compute 6656 / 1500 = 4.437 s < memory 4448 / 800 = 5.56 s; + 0.06 s
        (decode(ON_NPU, 2), 5.62),
        # attention on gpu: max(1408 / 1600 = 0.88, 1248 / 1000 = 1.248) + 10 kernels x 1 ms;
        # FFN + head on npu: max(2048 / 1500 = 1.365, 2448 / 800 = 3.06) + 10 kernels x 2 ms;
        # two handoffs a layer: (10 + 20 ms) x 2 layers = 0.06 s.
        #   1.248 + 0.01 + 3.06 + 0.02 + 0.06 = 4.398 s
        (decode(SPLIT), 4.398),
        # gpu batch 1 + 2 allocations of 50 B in all: 2 x 5 ms + 50 / 1000 = 0.06 s -> 3.786 s
        (decode(ON_GPU, num_allocs=2, alloc_bytes=50), 3.786),
    ],
    ids=["gpu-memory-bound", "gpu-compute-bound", "npu-memory-bound", "npu-batch2", "split",
         "allocs"],
)
def test_one_step_alone(hw, plan, seconds):
    log, (result,) = run_steps(hw, plan)
    assert result.elapsed_s == pytest.approx(seconds)
    assert log == [(plan.placement.decode_ffn, pytest.approx(seconds))]


def test_split_step_segments():
    _, (result,) = run_steps(SHARED, decode(SPLIT))
    assert result.segments == [("gpu", "attention", pytest.approx(1.258)),
                               ("npu", "ffn", pytest.approx(3.08)),
                               ("npu", "handoff", pytest.approx(0.06))]
    assert result.device_busy_s == {"gpu": pytest.approx(1.258), "npu": pytest.approx(3.14)}


def test_two_steps_on_one_bus_share_it():
    # gpu batch 1: 3696 B wanting 3696 / 3.696 = 1000 B/s; npu batch 2: 4448 B wanting 800 B/s.
    #   t=0        bus 1000 B/s: fair share 500 < 800 and < 1000 -> 500 B/s each
    #   t=7.392    gpu's 3696 B moved (3696 / 500); npu moved 3696 too, 752 B left
    #              gpu then waits its fixed 0.03 s      -> gpu step ends at 7.422
    #   t=7.392    npu alone at 800 B/s: 752 / 800 = 0.94 s -> 8.332, + fixed 0.06 -> 8.392
    # (alone: 3.726 and 5.62 s)
    log, (gpu, npu) = run_steps(SHARED, decode(ON_GPU), decode(ON_NPU, 2))
    assert log == [("gpu", pytest.approx(7.422)), ("npu", pytest.approx(8.392))]
    assert (gpu.elapsed_s, npu.elapsed_s) == (pytest.approx(7.422), pytest.approx(8.392))


def test_two_steps_on_separate_buses_do_not_slow_each_other():
    log, (gpu, npu) = run_steps(SEPARATE, decode(ON_GPU), decode(ON_NPU, 2))
    assert log == [("gpu", pytest.approx(3.726)), ("npu", pytest.approx(5.62))]


# -- the coefficient model -------------------------------------------------------------------------
COEFFICIENTS = CoefficientConfig.model_validate({
    "baseline_decode_tok_s": {"value": 20.0, "source": "[test]"},
    "baseline_prefill_tok_s": {"value": 600.0, "source": "[test]"},
    "techniques": {"tiering": {"value": 1.25, "source": "[test]"},
                   "speculation": {"value": 2.0, "source": "[test]"},
                   "npu": {"value": 0.8, "source": "[test]"}},
})


@pytest.mark.parametrize(
    ("enabled", "tokens_per_seq", "seconds"),
    [
        (frozenset(), 1.0, 0.05),  # 1 / 20
        (frozenset({"tiering"}), 1.0, 0.04),  # 1 / (20 x 1.25)
        (frozenset({"tiering", "speculation"}), 2.5, 0.05),  # 2.5 / (20 x 1.25 x 2)
        (frozenset({"tiering", "speculation", "npu"}), 2.5, 0.0625),  # 2.5 / 40
        (frozenset({"buffers"}), 1.0, 0.05),  # enabled but without a coefficient: x 1
    ],
)
def test_coefficient_decode_step(enabled, tokens_per_seq, seconds):
    model = CoefficientModel(COEFFICIENTS)
    plan = decode(SPLIT, enabled=enabled, tokens_per_seq=tokens_per_seq)
    log, (result,) = run_steps(SHARED, plan, model=model)
    assert result.elapsed_s == pytest.approx(seconds)
    assert result.segments == [("npu", "decode", pytest.approx(seconds))]


def test_coefficient_prefill_step():
    # 300 prompt tokens / (600 tok/s x 1.25) = 0.4 s, on the prefill device
    plan = StepPlan(phase="prefill", request_ids=(0,), num_tokens=300, num_rows=1,
                    attended_pairs=45150, kv_read_bytes=0, kv_dequant_values=0, placement=SPLIT,
                    enabled=frozenset({"tiering"}))
    _, (result,) = run_steps(SHARED, plan, model=CoefficientModel(COEFFICIENTS))
    assert result.elapsed_s == pytest.approx(0.4)
    assert result.segments == [("gpu", "prefill", pytest.approx(0.4))]
