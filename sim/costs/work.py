"""FLOPs, bytes and kernels of each op group of a transformer step (pure arithmetic).

Conventions: a multiply-add is 2 FLOPs; weights are read once per step whatever the batch; all
figures are totals over the model's layers.  Attention FLOPs are 2 x 2 x heads x head_dim per
(query token, attended token) pair: QK^T and PV (Vaswani et al. 2017; the roofline method of
Williams et al. 2009).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sim.config.model_spec import ModelSpec

ACT_BYTES = 2  # FP16/BF16 activations
LOGIT_BYTES = 4  # FP32 logits
DEQUANT_FLOPS_PER_VALUE = 2  # (q - zero) x scale
KERNELS_ATTENTION = 5  # norm, QKV projection, RoPE + attention, output projection, residual
KERNELS_FFN = 4  # norm, gate/up projection, activation, down projection (+ residual)
KERNELS_HEAD = 2  # final norm, LM head


@dataclass(frozen=True, slots=True)
class Work:
    """What one op group costs: FLOPs, bytes moved to or from memory, kernels launched."""

    flops: float
    bytes: float
    kernels: int

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes,
                    self.kernels + other.kernels)

    def scaled(self, factor: float) -> Work:
        return Work(self.flops * factor, self.bytes * factor, round(self.kernels * factor))


def attention_work(spec: ModelSpec, num_tokens: int, attended_pairs: float,
                   kv_read_bytes: float, kv_dequant_values: float) -> Work:
    """QKV + attention + output projection over all layers for ``num_tokens`` query tokens.

    ``kv_read_bytes`` is the resident KV (all layers) read by attention; the new tokens' K and V
    are written at FP16.  ``kv_dequant_values`` counts the INT8/INT4 values dequantized on the fly.
    """
    layers = spec.num_layers
    proj_flops = 2 * num_tokens * spec.attention_params * layers
    attn_flops = 4 * spec.num_heads * spec.head_dim * attended_pairs * layers
    weights = spec.attention_params * layers * spec.weight_bits / 8
    kv_write = num_tokens * spec.kv_values_per_token * ACT_BYTES
    acts = 4 * num_tokens * spec.hidden * ACT_BYTES * layers
    return Work(proj_flops + attn_flops + DEQUANT_FLOPS_PER_VALUE * kv_dequant_values,
                weights + kv_read_bytes + kv_write + acts, KERNELS_ATTENTION * layers)


@lru_cache(maxsize=4096)
def ffn_work(spec: ModelSpec, num_tokens: int) -> Work:
    layers = spec.num_layers
    weights = spec.ffn_params * layers * spec.weight_bits / 8
    # gated (SwiGLU): gate, up and their product; plain MLP: up and its activation
    intermediates = 3 if spec.gated_ffn else 2
    acts = num_tokens * (2 * spec.hidden + intermediates * spec.ffn_hidden) * ACT_BYTES * layers
    return Work(2 * num_tokens * spec.ffn_params * layers, weights + acts, KERNELS_FFN * layers)


@lru_cache(maxsize=4096)
def head_work(spec: ModelSpec, num_rows: int) -> Work:
    """Final norm and LM head for the ``num_rows`` positions whose logits are needed."""
    weights = spec.head_params * spec.weight_bits / 8
    return Work(2 * num_rows * spec.head_params,
                weights + num_rows * (spec.hidden * ACT_BYTES + spec.vocab * LOGIT_BYTES),
                KERNELS_HEAD)
