"""Perplexity of a model whose KV cache is tiered by a tiering policy, measured for real.

The text is fed in chunks of ``chunk`` tokens through the paged KV store (``adapters.kv.paged``);
after each chunk the tiering policy sees the engine's view of the cache (``sim.engine.kv_store`` +
``sim.engine.retier``: the same observation, pressures and validation as in the simulator and under
``infer-os measure``) and its decisions are applied to the real tensors before the next chunk is
scored.  So every token from ``eval_from`` on is predicted from a context held at the precisions
the policy chose (quantized blocks dequantized on the fly, offloaded or evicted blocks absent).

The device budget is ``budget_frac`` x the FP16 bytes of the whole window, reserved up front as
the engine does, so a policy that reacts to memory pressure (``progressive``) sees it from the
first chunk.  Memory saved is measured at the end of the window: ``1 - device KV bytes / FP16
bytes of every token of the window`` (an evicted or offloaded token counts as saved).

Beside the measurement, each chunk's KV state is recorded as the simulator's quality model sees it
(``quality_passes``: every block's measured attention share and precision, taken where the
re-tiering pass after the chunk computes its quality signal, i.e. before its decisions, so it
is the state the chunk was scored under), for ``sim.quality.fit`` to predict and fit from.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adapters.kv.paged import PagedKV
from adapters.kv.paged_step import PagedStep
from adapters.model.transformer import Transformer
from policies import Precision
from sim.config.scenario import AttentionConfig, QualityConfig
from sim.engine.kv_store import PagedKVStore, block_bytes
from sim.engine.retier import Retierer
from sim.quality.attention import AttentionModel, MeasuredAttention
from sim.quality.fit import QualityPass, QualityRun
from sim.quality.model import penalties


@dataclass(frozen=True)
class TieredPerplexity:
    ppl: float
    nll_sum: float  # nats, over the scored tokens
    num_scored: int
    kv_saved_frac: float  # at the end of the window, against FP16 for every token
    kv_bytes_by_precision: dict[str, int]  # at the end of the window
    moves: dict[str, int]
    quality_passes: tuple[QualityPass, ...] = ()  # one per chunk, as the quality model sees it
    quality_samples: tuple[float, ...] = ()  # the Retierer's own delta-PPL signal, every pass


@torch.inference_mode()
def tiered_nll(model: Transformer, ids: list[int], policy, *, block_tokens: int = 64,
               group: int = 64, chunk: int = 128, eval_from: int = 512,
               kv_dtype: torch.dtype = torch.float16, budget_frac: float = 1.0,
               seed: int = 0, measured_attention: bool = True,
               quality: QualityConfig | None = None) -> TieredPerplexity:
    """Score ``ids[eval_from + 1:]`` (each token predicted from all before it) under
    ``policy``'s tiering decisions, re-taken after every chunk.  ``quality`` gives the penalties
    of the quality signal the policy observes (default: the placeholders)."""
    cfg = model.cfg
    dev = model.tok_embeddings.weight.device
    dtype = model.tok_embeddings.weight.dtype
    kv = PagedKV(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                 head_dim=cfg.head_dim, block_tokens=block_tokens, group=group, dtype=kv_dtype,
                 device=dev)
    kv.add(0, capacity_tokens=len(ids))
    values_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    sizes = block_bytes(values_per_token, block_tokens, group)
    fp16_window = -(-len(ids) // block_tokens) * sizes[Precision.FP16]
    store = PagedKVStore(block_tokens, sizes, budget_frac * fp16_window, 4 * fp16_window, 1)
    attention = MeasuredAttention() if measured_attention else AttentionModel(
        AttentionConfig(), seed)
    retierer = Retierer(policy, attention, penalties(quality or QualityConfig()),
                        values_per_token * block_tokens)
    retierer.retier(store, [], 0)
    nll, scored = 0.0, 0
    passes = []
    for start in range(0, len(ids) - 1, chunk):
        x = ids[start:start + chunk]
        if start == 0:
            store.admit(0, len(x), len(ids), retierer.new_block_precision)
        _apply(kv, store, model, ids)
        step = PagedStep(kv, [0], len(x), dtype, measure_attention=measured_attention)
        positions = torch.arange(start, start + len(x), device=dev)[None]
        logits = model(torch.tensor([x], device=dev), step, positions)[0]  # [T, V]
        if measured_attention:
            attention.record(0, step.block_shares(cfg.num_layers)[0].numpy())
        step.commit()
        targets = torch.tensor(ids[start + 1:start + 1 + len(x)], device=dev)
        losses = F.cross_entropy(logits[:len(targets)].float(), targets, reduction="none")
        first = max(eval_from - start, 0)
        chunk_nll = float(losses[first:].sum())
        nll += chunk_nll
        scored += max(len(targets) - first, 0)
        if start > 0:
            store.append_tokens(0, len(x), retierer.new_block_precision)
        precs = np.frombuffer(bytes(store.blocks_raw(0)), dtype=np.uint8).copy()
        passes.append(QualityPass(attention.shares(0, len(precs)).copy(), precs,
                                  max(len(targets) - first, 0), chunk_nll))
        retierer.retier(store, [0], start + len(x))
    _apply(kv, store, model, ids)
    by_prec = kv.bytes_by_precision()
    device = kv.device_bytes()
    full = len(ids) * values_per_token * 2
    return TieredPerplexity(math.exp(nll / scored) if scored else float("nan"), nll, scored,
                            1 - device / full, by_prec, dict(sorted(retierer.moves.items())),
                            tuple(passes), tuple(retierer.quality_samples))


def quality_run(name: str, model: Transformer, windows: list[list[int]], policy,
                **kw) -> QualityRun:
    """``policy``'s perplexity over every window (``tiered_nll`` on each, keywords passed on;
    a fresh copy of the policy per window: its state is per request), with the attention mix
    its KV cache was scored under."""
    runs = [tiered_nll(model, ids, copy.deepcopy(policy), **kw) for ids in windows]
    return QualityRun.of(name, sum(r.nll_sum for r in runs), sum(r.num_scored for r in runs),
                         [p for r in runs for p in r.quality_passes])


def _apply(kv: PagedKV, store: PagedKVStore, model: Transformer, ids: list[int]) -> None:
    """The store's precision for every full block of the real cache (and its FP16 backups)."""
    desired = np.frombuffer(bytes(store.blocks_raw(0)), dtype=np.uint8)
    backups = store.backups_raw(0)
    full = kv.num_tokens(0) // kv.bt
    changed = [i for i in range(min(full, len(desired))) if kv.block_precision(0, i) != desired[i]]
    kv.set_precisions(0, changed, [int(desired[i]) for i in changed], _recompute(model, ids, kv.bt),
                      [bool(backups[i]) for i in changed])


def _recompute(model: Transformer, ids: list[int], bt: int):
    def run(rid: int, block: int) -> torch.Tensor:
        end = (block + 1) * bt
        cache = model.new_cache(1, end)
        dev = model.tok_embeddings.weight.device
        model(torch.tensor([ids[:end]], device=dev), cache, torch.arange(end, device=dev))
        s = slice(block * bt, end)
        return torch.stack([cache.k[:, 0, :, s], cache.v[:, 0, :, s]], dim=1)
    return run
