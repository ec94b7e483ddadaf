"""The tiny model and paged store the torch KV tests share: two layers, two KV heads, blocks of
16 tokens.  Imports torch: a test module imports this after ``pytest.importorskip("torch")``."""

from __future__ import annotations

import torch

from adapters.kv.paged import PagedKV
from adapters.kv.paged_step import PagedStep
from adapters.model.transformer import ModelConfig, Transformer

CFG = ModelConfig("llama", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, head_dim=16,
                  ffn_hidden=128, vocab=256, tied_embeddings=False, norm_eps=1e-5,
                  max_positions=4096)
BT = 16  # tokens per block


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CFG).eval()


def random_ids(n: int, seed: int = 1) -> torch.Tensor:
    """[1, n] token ids."""
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def make_store(dtype=torch.float32, group: int = BT, **kw) -> PagedKV:
    return PagedKV(num_layers=CFG.num_layers, num_kv_heads=CFG.num_kv_heads,
                   head_dim=CFG.head_dim, block_tokens=BT, group=group, dtype=dtype, **kw)


@torch.inference_mode()
def forward(model, kv: PagedKV, rids: list[int], ids: torch.Tensor) -> torch.Tensor:
    """One forward of ids [B, T] through the store; -> logits [B, T, V]."""
    step = PagedStep(kv, rids, ids.shape[1], torch.float32)
    positions = torch.tensor([[kv.num_tokens(r) + t for t in range(ids.shape[1])] for r in rids])
    logits = model(ids, step, positions)
    step.commit()
    return logits


@torch.inference_mode()
def reference_forward(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)  # full causal forward, no cache


def filled_store(model, ids: torch.Tensor) -> PagedKV:
    """A float32 store holding request 0, ``ids`` forwarded into it."""
    kv = make_store()
    kv.add(0)
    forward(model, kv, [0], ids)
    return kv
