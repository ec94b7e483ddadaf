"""The fused dequantizing attention kernel (adapters.kv.fused) against the torch path it replaces
(PagedStep.read + SDPA): the same store, the same queries, every precision and KV dtype, decode and
verify-sized steps, one or several requests of different lengths."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from adapters.kv import fused
from adapters.kv.paged import PagedKV
from adapters.kv.paged_step import PagedStep
from policies import Precision

L, K, D, G = 2, 3, 64, 3  # layers, KV heads, head dim, query heads per KV head

if os.environ.get("INFER_OS_REQUIRE_KERNEL") == "1":
    assert fused.available(), fused.unavailable_reason()
pytestmark = pytest.mark.skipif(not fused.available(),
                                reason=f"no fused kernel here: {fused.unavailable_reason()}")


@torch.inference_mode()
def _store(dtype: torch.dtype, lengths: list[int], tiers: list[Precision], bt: int = 16,
           group: int = 64) -> PagedKV:
    """Requests of the given token counts, full blocks cycling through ``tiers``."""
    gen = torch.Generator().manual_seed(0)
    kv = PagedKV(num_layers=L, num_kv_heads=K, head_dim=D, block_tokens=bt, group=group,
                 dtype=dtype)
    for rid, n in enumerate(lengths):
        kv.add(rid, n)
        kv.reserve(rid, n)
        for layer in range(L):
            k = torch.randn((K, n, D), generator=gen) * 2
            k[:, :, 5] *= 10  # an outlier channel, as real keys have
            kv.write(rid, layer, k, torch.randn((K, n, D), generator=gen), 0)
        kv.append(rid, n)
        for block in range(n // bt):
            kv.set_precision(rid, block, tiers[block % len(tiers)])
    return kv


@torch.inference_mode()
def _both(kv: PagedKV, T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of layer 1 with T new tokens per request: (fused, torch path)."""
    gen = torch.Generator().manual_seed(seed)
    rids = sorted(kv.requests)
    step = PagedStep(kv, rids, T, torch.float32)
    assert step.attend is not None
    for layer in range(L):
        step.write(layer, torch.arange(T), torch.randn((len(rids), K, T, D), generator=gen),
                   torch.randn((len(rids), K, T, D), generator=gen))
    q = torch.randn((len(rids), K, G * T, D), generator=gen) * 3
    ours = step.attend(1, q)
    k, v = step.read(1, step.S)
    mask, _ = step.attention_mask()
    if mask is not None:
        mask = mask.repeat(1, 1, G, 1)  # rows g * T + t, as Transformer._context does
    return ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tiers", [[Precision.FP16], [Precision.INT8], [Precision.INT4],
                                   [Precision.INT2],
                                   [Precision.INT8, Precision.FP16, Precision.INT4,
                                    Precision.INT2]])
def test_decode_matches_the_torch_path(dtype, tiers):
    ours, ref = _both(_store(dtype, [200], tiers), T=1)
    assert ours.shape == ref.shape == (1, K, G, D)
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("T", [2, 5])
def test_verify_rows_are_causal_among_the_new_tokens(T):
    kv = _store(torch.float16, [150, 67, 16], [Precision.INT4, Precision.FP16])
    ours, ref = _both(kv, T)
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)


def test_blocks_longer_than_a_tile_and_groups_shorter_than_a_block():
    # 80-token blocks (3 tiles of 32 in the kernel) with 32-token key groups (3 per block)
    kv = _store(torch.float16, [400], [Precision.INT8, Precision.INT2], bt=80, group=32)
    ours, ref = _both(kv, T=1)
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)


def test_a_request_with_only_new_tokens():
    ours, ref = _both(_store(torch.float16, [0], [Precision.FP16]), T=3)
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)


def test_loading_the_kernel_leaves_subnormal_floats_alone():
    """A shared object linked with -ffast-math turns flush-to-zero on for the whole process
    (crtfastmath.o): numpy, torch and hypothesis would then see subnormals as 0."""
    import numpy as np

    assert fused.available()
    tiny = float("1e-310")  # a subnormal double
    assert tiny * 2.0 > 0.0
    assert np.float32(1e-40) * np.float32(2.0) > 0


def test_the_torch_mode_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("INFER_OS_KV_KERNEL", "torch")
    kv = _store(torch.float16, [32], [Precision.INT8])
    assert PagedStep(kv, [0], 1, torch.float32).attend is None
    monkeypatch.setenv("INFER_OS_KV_KERNEL", "bogus")
    with pytest.raises(Exception, match="INFER_OS_KV_KERNEL must be auto, fused or torch"):
        fused.mode()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 4])
@torch.inference_mode()
def test_the_contiguous_cache_attends_as_sdpa_does(dtype, T):
    """Decode (T = 1) and verify (T = 4) steps of the contiguous cache (generate, speculative
    decoding, drafts): new tokens at positions S - T .. S - 1, causal among themselves."""
    from adapters.kv.cache import ContiguousKVCache

    gen = torch.Generator().manual_seed(2)
    cache = ContiguousKVCache.empty(num_layers=1, batch=2, num_kv_heads=K, head_dim=D,
                                    max_tokens=300, dtype=dtype)
    assert cache.attend is not None
    S = 257
    cache.write(0, torch.arange(S - T), torch.randn((2, K, S - T, D), generator=gen),
                torch.randn((2, K, S - T, D), generator=gen))
    cache.write(0, torch.arange(S - T, S), torch.randn((2, K, T, D), generator=gen),
                torch.randn((2, K, T, D), generator=gen))
    q = torch.randn((2, K, G * T, D), generator=gen).to(dtype)
    ours = cache.attend(0, q)
    k, v = cache.read(0, S)
    mask = (torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]).repeat(G, 1)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    tol = 2e-5 if dtype == torch.float32 else 1e-2  # bf16: the output is rounded to bf16
    torch.testing.assert_close(ours.float(), ref, rtol=tol, atol=tol)


@torch.inference_mode()
def test_the_contiguous_cache_leaves_irregular_steps_to_sdpa():
    from adapters.kv.cache import ContiguousKVCache

    cache = ContiguousKVCache.empty(num_layers=1, batch=1, num_kv_heads=K, head_dim=D,
                                    max_tokens=64)
    cache.write(0, torch.tensor([5, 9]), torch.zeros((1, K, 2, D)), torch.zeros((1, K, 2, D)))
    assert cache.attend(0, torch.zeros((1, K, 2 * G, D))) is None  # not the last T positions
    cache.write(0, torch.arange(40), torch.zeros((1, K, 40, D)), torch.zeros((1, K, 40, D)))
    assert cache.attend(0, torch.zeros((1, K, 40 * G, D))) is None  # a prefill: 120 rows


def test_the_generic_paths_without_avx512_agree_too(monkeypatch):
    """The kernel built without AVX-512 (AVX2 machines: scalar dequantization into tiles, dot
    products) against the torch path, every precision, decode and verify."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86 flag")
    generic = fused._build(("-mno-avx512f",))
    monkeypatch.setattr(fused, "_lib", generic)
    for tiers in ([Precision.FP16], [Precision.INT8], [Precision.INT4], [Precision.INT2]):
        for T in (1, 3):
            ours, ref = _both(_store(torch.float16, [200, 67], tiers), T)
            torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)
