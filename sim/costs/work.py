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


@dataclass(frozen=True, slots=True)
class AttentionShape:
    """The per-model constants of ``attention_work``, computed once per model (a cost model asks
    for attention work every step): ``work`` gives the same figures by the same operations."""

    proj_flops_per_token: int  # 2 x attention params x layers
    pair_flops: int  # 4 x heads x head_dim (x layers, applied last as attention_work does)
    num_layers: int
    weight_bytes: float
    kv_write_bytes_per_token: int
    act_bytes_per_token: int  # 4 x hidden x ACT_BYTES x layers
    kernels: int

    def work(self, num_tokens: int, attended_pairs: float, kv_read_bytes: float,
             kv_dequant_values: float, rest: Work | None = None) -> Work:
        """``attention_work``; plus ``rest`` (the same as ``+ rest``, one object fewer)."""
        proj_flops = self.proj_flops_per_token * num_tokens
        attn_flops = self.pair_flops * attended_pairs * self.num_layers
        kv_write = num_tokens * self.kv_write_bytes_per_token
        acts = num_tokens * self.act_bytes_per_token
        flops = proj_flops + attn_flops + DEQUANT_FLOPS_PER_VALUE * kv_dequant_values
        nbytes = self.weight_bytes + kv_read_bytes + kv_write + acts
        if rest is None:
            return Work(flops, nbytes, self.kernels)
        return Work(flops + rest.flops, nbytes + rest.bytes, self.kernels + rest.kernels)


@lru_cache(maxsize=64)
def attention_shape(spec: ModelSpec) -> AttentionShape:
    layers = spec.num_layers
    return AttentionShape(
        proj_flops_per_token=2 * spec.attention_params * layers,
        pair_flops=4 * spec.num_heads * spec.head_dim, num_layers=layers,
        weight_bytes=spec.attention_params * layers * spec.weight_bits / 8,
        kv_write_bytes_per_token=spec.kv_values_per_token * ACT_BYTES,
        act_bytes_per_token=4 * spec.hidden * ACT_BYTES * layers,
        kernels=KERNELS_ATTENTION * layers)


def attention_work(spec: ModelSpec, num_tokens: int, attended_pairs: float,
                   kv_read_bytes: float, kv_dequant_values: float) -> Work:
    """QKV + attention + output projection over all layers for ``num_tokens`` query tokens.

    ``kv_read_bytes`` is the resident KV (all layers) read by attention; the new tokens' K and V
    are written at FP16.  ``kv_dequant_values`` counts the INT8/INT4 values dequantized on the fly.
    """
    return attention_shape(spec).work(num_tokens, attended_pairs, kv_read_bytes,
                                      kv_dequant_values)


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
