"""The ``KVCache`` the model sees during one forward over a batch of requests stored in a
``PagedKV``: new K/V written to each request's arena, attention over each request's resident
tokens (padded to the longest row, with a per-row mask), and, when asked, the attention each block
drew, measured from the model's own queries and keys."""

from __future__ import annotations

import torch

from adapters.kv import fused
from adapters.kv.cache import KVCache
from adapters.kv.paged import PagedKV


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention probabilities of one layer (q [B, K, G*T, D] against k [B, K, S, D], the
    model's mask), averaged over heads and query rows -> [B, S] float32.  What a tiering policy
    that observes blocks sees, summed over layers (also inside the ONNX graph:
    ``adapters.ort_backend.export``)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=(1, 2))


OBSERVE_ROWS = 256  # query rows whose probabilities are held at once when measuring in torch


def attention_probs_chunked(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                            rows: int = OBSERVE_ROWS) -> torch.Tensor:
    """``attention_probs``, ``rows`` query rows at a time: a prompt's [B, K, G*T, S] scores
    held whole are tens of MB a layer, fresh pages every layer, and what they cost varied
    from run to run by half (an observed 825-token prefill took 1.4-2.2 s); a few MB at a time
    stay in the caches."""
    n = q.shape[2]
    if n <= rows:
        return attention_probs(q, k, mask)
    total = None
    for lo in range(0, n, rows):
        part = attention_probs(q[:, :, lo:lo + rows], k,
                               None if mask is None else mask[..., lo:lo + rows, :])
        part = part * min(rows, n - lo)  # the mean over this chunk's rows -> their sum
        total = part if total is None else total + part
    return total / n


class PagedStep(KVCache):
    """The ``KVCache`` the model sees during one forward over a batch of stored requests, each
    feeding ``num_new`` tokens.  New K/V go to the end of each request's arena; attention runs
    over each request's resident tokens plus the new ones (causal among the new ones), padded to
    the longest row.  ``commit()`` accounts the new tokens once the forward is done."""

    # observe_attention: None (the protocol's default), or ``_observe`` when attention is measured

    def __init__(self, kv: PagedKV, rids: list[int], num_new: int,
                 compute_dtype: torch.dtype, measure_attention: bool = False):
        self.kv, self.rids, self.T, self.dtype = kv, list(rids), num_new, compute_dtype
        for rid in self.rids:
            kv.reserve(rid, num_new)
        self.offsets = [kv.arena_tokens(rid) for rid in self.rids]
        self.past = [kv.resident_tokens(rid) for rid in self.rids]
        self.S = max(self.past) + num_new
        B, T, S = len(self.rids), num_new, self.S
        if B == 1 and T == 1:
            self._mask = None  # one query attends to everything
        else:
            keys = torch.arange(S, device=kv.device)
            past = torch.tensor(self.past, device=kv.device)[:, None, None]  # [B, 1, 1]
            query = torch.arange(T, device=kv.device)[None, :, None]  # [1, T, 1]
            rel = keys[None, None, :] - past  # key index relative to the first new token
            self._mask = ((rel < 0) | ((rel >= 0) & (rel <= query)))[:, None]  # [B,1,T,S]

        self._probs: torch.Tensor | None = None  # [B, S]: attention summed over layers
        if measure_attention:
            self.observe_attention = self._observe
        elif kv.device.type == "cpu" and fused.available():
            self.attend = self._attend  # decode / verify rows: the fused kernel, per request

    def _attend(self, layer: int, q: torch.Tensor) -> torch.Tensor | None:
        """q [B, K, G * T, D] -> the attention output, from ``adapters.kv.fused`` (None for a
        prefill-sized step: SDPA over ``read``'s keys is faster there)."""
        if q.shape[2] > fused.MAX_ROWS:
            return None
        rows = [fused.attend(self.kv, rid, layer, q[b], self.T) for b, rid in enumerate(self.rids)]
        return torch.stack(rows).to(q.dtype)

    def attention_mask(self) -> tuple[torch.Tensor | None, int]:
        return self._mask, self.S

    def _observe(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 mask: torch.Tensor | None) -> None:
        probs = attention_probs_chunked(q, k, mask)
        self._probs = probs if self._probs is None else self._probs + probs

    def block_shares(self, num_layers: int) -> list[torch.Tensor]:
        """Per row: the share of the step's attention each block drew (float64 [n_blocks],
        summing to 1 over the row's resident blocks), from the measured probabilities."""
        assert self._probs is not None, "no attention was measured in this step"
        probs = (self._probs / num_layers).double().cpu()
        out = []
        for b, rid in enumerate(self.rids):
            blocks = self.kv.key_blocks(rid, extra=self.T)
            out.append(torch.bincount(blocks, weights=probs[b, :len(blocks)]))
        return out

    def write(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        for b, rid in enumerate(self.rids):
            self.kv.write(rid, layer, k[b], v[b], self.offsets[b])

    def read(self, layer: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.rids) == 1:
            k, v = self.kv.layer_kv(self.rids[0], layer, extra=self.T, dtype=self.dtype)
            return k[None], v[None]
        kv = self.kv
        k = torch.zeros((len(self.rids), kv.K, self.S, kv.D), dtype=self.dtype, device=kv.device)
        v = torch.zeros_like(k)
        for b, rid in enumerate(self.rids):
            rk, rv = kv.layer_kv(rid, layer, extra=self.T, dtype=self.dtype)
            k[b, :, :rk.shape[1]] = rk
            v[b, :, :rv.shape[1]] = rv
        return k, v

    def commit(self, kept: list[int] | None = None) -> None:
        """Account the new tokens: all of them, or ``kept[b]`` for row b (speculation)."""
        for b, rid in enumerate(self.rids):
            self.kv.append(rid, self.T if kept is None else kept[b])
