"""The features of one forward pass, the single definition the calibration computes from the
state it measured and the ``calibrated`` cost model (``sim.costs.calibrated``) from the engine's
step plan: per forward, per layer, per row and layer, per token and layer, weight bytes, matmul and
attention FLOPs, KV bytes, dequantized values, the fused kernel's work, observed scores, and the
step up of a matrix-matrix product by its rows (``sim.costs.gemm_rows``).  A profile's
``coefficients`` are seconds per unit of each, keyed by ``FEATURES``."""

from __future__ import annotations

from typing import Literal

import numpy as np

from sim.config.model_spec import ModelSpec
from sim.costs.gemm_rows import NO_KNOTS, gemm_row_weights

FEATURES = ("forward", "layer", "gemm_layer", "row_layer", "token_layer", "weight_bytes",
            "matmul_flops",
            "attention_flops", "kv_bytes", "dequant_int8_values", "dequant_int4_values",
            "dequant_int2_values", "concat_bytes", "observed_scores", "quant_segment_layer",
            "small_gemm_row_layer", "fused_attention_flops", "fused_fp_bytes",
            "fused_int8_values", "fused_int4_values", "fused_int2_values",
            "observed_prompt_scores", "gemm_rows_2", "gemm_rows_3", "gemm_rows_4", "gemm_rows_5",
            "gemm_rows_6", "gemm_rows_8", "gemm_rows_12", "gemm_rows_16",
            "observed_prompt_long_scores")
# query rows per KV head (G * T) up to which the torch executor's fused kernel attends
# (adapters.kv.fused): a decode or verify pass, or a prompt of at most 64 / G tokens
FUSED_MAX_ROWS = 64
SMALL_GEMM_ROWS = 16  # query rows up to which each row of a matrix-matrix product costs extra
# prompt tokens between which an observed prompt's scores grow dearer (``long_prompt_weight``):
# the longest prompt whose per-score cost matched shorter ones', and the longest timed
LONG_PROMPT_TOKENS = (512, 2048)
Feature = Literal[FEATURES]  # type: ignore[valid-type]


def attention_padded(batch: str, observed: bool) -> bool:
    """Whether a forward's attention runs over its rows padded to the longest, under the
    profile's ``layout.batch``: always (``padded``), never (``exact``), or only when it measures
    attention (``fused``: the fused kernel does not measure, the torch path it falls back on
    pads)."""
    return batch == "padded" or (batch == "fused" and observed)


def fused_attention(batch: str, observed: bool, spec: ModelSpec, new_tokens: int) -> bool:
    """Whether a forward attends with the fused kernel (``layout.batch: fused``): it does not
    measure attention and has at most ``FUSED_MAX_ROWS`` query rows per KV head."""
    group = spec.num_heads // spec.num_kv_heads
    return batch == "fused" and not observed and group * new_tokens <= FUSED_MAX_ROWS


def forward_features(spec: ModelSpec, num_layers: int, new_tokens: int,
                     row_resident: np.ndarray, row_quantized: np.ndarray, head_rows: int,
                     weight_bytes_per_param: float, kv_bytes_per_value: float,
                     padded: bool, observed: bool = False, fused: bool = False) -> np.ndarray:
    """Features of one forward pass over ``len(row_resident)`` rows, each feeding ``new_tokens``
    tokens and attending to its ``row_resident`` stored tokens plus the new ones.
    ``row_quantized`` [rows, 3]: stored tokens at INT8, INT4, INT2 (dequantized every layer);
    ``num_layers`` may be below the spec's (a layer-skip draft).  ``observed``: the attention
    each block draws is measured too (one more q.K product and softmax per layer, for tiering
    policies that observe blocks).  ``fused``: attention runs in the fused kernel (row by row,
    reading codes and FP arena in place), whose work has features of its own; the torch path's
    (attention FLOPs over widened K/V, dequantized copies, concatenation) are then 0."""
    B, T, L = len(row_resident), new_tokens, num_layers
    S = row_resident.astype(np.float64) + T
    keys = B * float(S.max()) if (padded and B > 1) else float(S.sum())
    per_layer_params = spec.attention_params + spec.ffn_params
    values_per_layer_token = 2 * spec.num_kv_heads * spec.head_dim
    quantized = row_quantized.astype(np.float64).sum(axis=0) * values_per_layer_token * L
    has_quant = row_quantized.sum(axis=1) > 0
    attention_flops = 4.0 * spec.num_heads * spec.head_dim * L * T * keys
    kv = keys * L * values_per_layer_token * kv_bytes_per_value
    torch_path, fused_path = (0.0, 1.0) if fused else (1.0, 0.0)
    quant_tokens = float(row_quantized.sum())
    observed_scores = spec.num_heads * T * keys * L
    return np.array([
        1.0, L, L if B * T > 1 else 0.0, B * L, B * T * L,
        (L * per_layer_params + spec.head_params) * weight_bytes_per_param,
        2.0 * B * T * L * per_layer_params + 2.0 * head_rows * spec.head_params,
        attention_flops * torch_path, kv * torch_path,
        quantized[0] * torch_path, quantized[1] * torch_path, quantized[2] * torch_path,
        float(S[has_quant].sum()) * L * values_per_layer_token * kv_bytes_per_value * torch_path,
        observed_scores if observed and S.max() > T else 0.0,
        # per row, per precision it holds quantized blocks in, per layer: the dequantization's
        # fixed cost (a dozen small ops for K and V, whatever the number of blocks)
        float((row_quantized > 0).sum()) * L * torch_path,
        # per query row, up to SMALL_GEMM_ROWS, per layer, of a matrix-matrix forward over a
        # stored context (verify passes, batched decode): a verify pass of a few tokens costs
        # ~3 ms a row here against ~0.5 ms for a prompt token; a prompt's forward (nothing
        # stored) is left to the per-token terms, which fit prompts better on their own
        float(min(B * T, SMALL_GEMM_ROWS)) * L if B * T > 1 and S.max() > T else 0.0,
        # the fused kernel: multiply-adds over every key, FP keys' bytes, codes by precision
        attention_flops * fused_path,
        (float(S.sum()) - quant_tokens) * L * values_per_layer_token * kv_bytes_per_value
        * fused_path,
        quantized[0] * fused_path, quantized[1] * fused_path, quantized[2] * fused_path,
        # a prompt's observed scores apart: [G * T, S] probabilities a layer, which outgrow
        # the caches as the prompt grows (958 tokens: 26 % over the decode steps' rate)
        observed_scores if observed and S.max() <= T else 0.0,
        *(gemm_row_weights(B * T) * L if B * T > 1 and S.max() > T else NO_KNOTS),
        # and what each of those scores costs beyond a short prompt's, growing on a ramp from
        # LONG_PROMPT_TOKENS[0] to [1] (>= 0: the score matrices leave the caches; one rate fitted
        # 512 tokens 11-16 % long and 2,048 tokens 8-9 % short on both backends, 2026-12-05,
        # and ONNX Runtime's prompts of 825-958 tokens 20 % long)
        observed_scores * long_prompt_weight(T) if observed and S.max() <= T else 0.0,
    ])


def long_prompt_weight(tokens: int) -> float:
    """0 up to ``LONG_PROMPT_TOKENS[0]``, 1 from ``[1]``, linear in between."""
    lo, hi = LONG_PROMPT_TOKENS
    return min(max((tokens - lo) / (hi - lo), 0.0), 1.0)
