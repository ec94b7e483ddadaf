"""The K/V cache seam of our torch transformers: a small protocol, and a contiguous implementation.

The model writes each layer's new keys and values (after RoPE) and reads back the whole prefix to
attend over.  The paged cache with a precision per block (``adapters.kv.paged_step``) implements
the same two methods, and the two optional ones the protocol declares with defaults: its own
attention mask, and observing the attention of each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from adapters.kv import fused


class KVCache(Protocol):
    """Per-layer key/value storage for one batch of sequences that share their positions.

    Contract:
    - ``write(layer, positions, k, v)`` stores ``k``, ``v`` of shape [B, H_kv, T, D] at the absolute
      token positions ``positions`` ([T], int64, strictly increasing).  Writing a position again
      overwrites it (so a rejected speculative suffix can simply be rewritten).
    - ``read(layer, num_tokens)`` returns ``(k, v)``, each [B, H_kv, num_tokens, D], for positions
      ``0 .. num_tokens - 1``, in the model's dtype; every one of them must have been written.
    - The model calls ``write`` then ``read`` once per layer per forward, layers in order; it never
      keeps a returned tensor past that forward.
    - ``attention_mask()``, called once per forward before any layer: ``(mask, S)`` for a cache
      that decides what each query attends to (mask [B, 1, T, S] bool or None, S keys; the paged
      cache, whose rows have different lengths), or None (the default): the model then attends
      over positions 0..max(positions) with a causal mask.
    - ``observe_attention``: None (the default), or ``(layer, q, k, mask)`` called in every layer
      with the grouped queries [B, K, G * T, D], the keys read and the mask, for a cache that
      measures the attention each block draws.
    - ``attend``: None (the default), or ``(layer, q) -> y | None`` called after ``write`` with
      the grouped queries [B, K, G * T, D]: a cache that computes the attention output itself
      (the paged cache's fused dequantizing kernel, ``adapters.kv.fused``) returns it,
      [B, K, G * T, D]; None (from the callable) means: ``read`` and attend as usual.

    Implementations subclass it to inherit the defaults.
    """

    observe_attention: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None],
                                None] | None = None
    attend: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None: ...

    def read(self, layer: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attention_mask(self) -> tuple[torch.Tensor | None, int] | None:
        return None


@dataclass
class ContiguousKVCache(KVCache):
    """One preallocated [L, B, H_kv, max_tokens, D] tensor each for K and V.  Mutated by ``write``
    only; ``read`` returns views (no copy)."""

    k: torch.Tensor  # [L, B, H_kv, S_max, D]
    v: torch.Tensor  # [L, B, H_kv, S_max, D]

    def __post_init__(self) -> None:
        self._span: tuple[int, int] | None = None  # (first, last) position of the last write
        if self.k.device.type == "cpu" and fused.available():
            self.attend = self._attend  # decode / verify: the fused kernel, no SDPA

    @classmethod
    def empty(cls, *, num_layers: int, batch: int, num_kv_heads: int, head_dim: int,
              max_tokens: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> ContiguousKVCache:
        shape = (num_layers, batch, num_kv_heads, max_tokens, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_tokens(self) -> int:
        return self.k.shape[3]

    @property
    def num_bytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        self.k[layer].index_copy_(2, positions, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, positions, v.to(self.v.dtype))
        if layer == 0 and self.attend is not None:
            T = positions.shape[-1]
            first, last = (int(positions[0]), int(positions[-1])) if positions.dim() == 1 \
                else (0, -1)
            # the fused path needs the new tokens to be the last T keys: positions S-T .. S-1
            self._span = (first, last) if last - first == T - 1 else None

    def _attend(self, layer: int, q: torch.Tensor) -> torch.Tensor | None:
        """q [B, K, G * T, D] -> attention over positions 0..last (causal among the T new
        ones), from ``adapters.kv.fused``; None (SDPA) for prefill-sized or irregular steps."""
        if self._span is None or q.shape[2] > fused.MAX_ROWS:
            return None
        first, last = self._span
        rows = [fused.attend_dense(self.k[layer, b], self.v[layer, b], q[b], last + 1,
                                   last + 1 - first) for b in range(q.shape[0])]
        out = rows[0][None] if len(rows) == 1 else torch.stack(rows)
        return out.to(q.dtype)

    def read(self, layer: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if num_tokens > self.max_tokens:
            raise ValueError(f"cache holds {self.max_tokens} tokens, {num_tokens} asked for")
        return self.k[layer, :, :, :num_tokens], self.v[layer, :, :, :num_tokens]
