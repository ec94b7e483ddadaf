"""The torch paged KV store: attention through it equals the contiguous cache; batched rows of
different lengths equal each row alone; tiers move blocks and restore them (copy, recompute);
bytes are the tensors' true sizes; rollback removes speculative tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.kv.paged import PagedKV  # noqa: E402
from adapters.kv.paged_step import PagedStep  # noqa: E402
from adapters.model.transformer import prefill  # noqa: E402
from policies import Precision  # noqa: E402
from sim.engine.kv_store import block_bytes  # noqa: E402
from tests.adapters.kv.tiny_model import (  # noqa: E402
    BT,
    CFG,
    forward,
    make_store,
    random_ids,
    reference_forward,
)


def test_prefill_then_decode_equals_the_full_forward(model):
    ids = random_ids(40)
    kv = make_store()
    kv.add(0)
    got = [forward(model, kv, [0], ids[:, :23])]
    for t in range(23, 40):
        got.append(forward(model, kv, [0], ids[:, t:t + 1]))
    ref = reference_forward(model, ids)
    assert (torch.cat(got, dim=1) - ref).abs().max() <= 1e-4
    assert kv.num_tokens(0) == 40


def test_a_batch_of_different_lengths_equals_each_row_alone(model):
    lengths = [5, 33, 18]
    kv = make_store()
    rows = [random_ids(n + 1, seed=n) for n in lengths]
    for rid, (n, ids) in enumerate(zip(lengths, rows)):
        kv.add(rid)
        forward(model, kv, [rid], ids[:, :n])
    nxt = torch.cat([ids[:, n:n + 1] for n, ids in zip(lengths, rows)])  # [3, 1]
    got = forward(model, kv, [0, 1, 2], nxt)[:, -1]
    for b, ids in enumerate(rows):
        assert (got[b] - reference_forward(model, ids)[0, -1]).abs().max() <= 1e-4


def test_fp16_storage_stays_close(model):
    ids = random_ids(30)
    kv = make_store(dtype=torch.float16)
    kv.add(0)
    got = forward(model, kv, [0], ids)
    assert (got - reference_forward(model, ids)).abs().max() <= 2e-2


@pytest.mark.parametrize("prec, tol", [(Precision.INT8, 0.05), (Precision.INT4, 0.6)])
def test_quantized_blocks_are_attended_with_bounded_error(model, prec, tol):
    ids = random_ids(50)
    kv = make_store()
    kv.add(0)
    forward(model, kv, [0], ids[:, :49])
    for b in range(3):  # every full block; the partial last one stays FP
        assert kv.set_precision(0, b, prec)
    assert not kv.set_precision(0, 3, prec)  # tokens 48.. do not fill block 3
    assert kv.block_precision(0, 1) == prec
    got = forward(model, kv, [0], ids[:, 49:])[0, -1]
    err = (got - reference_forward(model, ids)[0, -1]).abs().max()
    assert 0 < err <= tol  # really quantized, and still close


def test_offload_and_evict_are_restored_exactly(model):
    ids = random_ids(49)
    kv = make_store()
    kv.add(0)
    forward(model, kv, [0], ids[:, :48])
    before = [tuple(t.clone() for t in kv.layer_kv(0, layer)) for layer in range(CFG.num_layers)]

    def recompute(rid: int, block: int) -> torch.Tensor:
        cache = model.new_cache(1, (block + 1) * BT)
        prefill(model, ids[:, :(block + 1) * BT], cache)
        s = slice(block * BT, (block + 1) * BT)
        return torch.stack([cache.k[:, 0, :, s], cache.v[:, 0, :, s]], dim=1)

    kv.set_precision(0, 0, Precision.OFFLOADED)
    kv.set_precision(0, 2, Precision.EVICTED)
    assert kv.resident_tokens(0) == 16
    assert kv.bytes_by_precision()["offloaded"] > 0
    kv.set_precision(0, 2, Precision.FP16, recompute)
    kv.set_precision(0, 0, Precision.FP16)
    for layer, (k0, v0) in enumerate(before):
        k1, v1 = kv.layer_kv(0, layer)
        assert (k1 - k0).abs().max() <= 1e-5 and (v1 - v0).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="evicted"):
        kv.set_precision(0, 1, Precision.EVICTED)
        kv.set_precision(0, 1, Precision.INT8)


def test_true_bytes_match_the_simulators_block_bytes_and_int4_saves_70_percent(model):
    kv = PagedKV(num_layers=2, num_kv_heads=2, head_dim=64, block_tokens=64, group=64,
                 dtype=torch.float16)
    kv.add(0)
    step = PagedStep(kv, [0], 64, torch.float32)
    with torch.inference_mode():  # as in a forward
        for layer in range(2):
            x = torch.randn(1, 2, 64, 64)
            step.write(layer, None, x, x)
    step.commit()
    expected = block_bytes(2 * 2 * 2 * 64, 64, 64)  # values per token: L * (K + V) * H_kv * D
    assert kv.bytes_by_precision()["fp16"] == expected[Precision.FP16]
    kv.set_precision(0, 0, Precision.INT4)
    got = kv.bytes_by_precision()
    assert got["int4"] == expected[Precision.INT4] and got["fp16"] == 0
    assert 1 - got["int4"] / expected[Precision.FP16] >= 0.70
    assert kv.fp16_equiv_bytes() == expected[Precision.FP16]


def test_rollback_removes_speculative_tokens(model):
    ids = random_ids(40)
    kv = make_store()
    kv.add(0)
    forward(model, kv, [0], ids[:, :30])
    forward(model, kv, [0], random_ids(5, seed=9))  # 5 rejected tokens, crossing block 1 -> 2
    kv.truncate(0, 30)
    got = forward(model, kv, [0], ids[:, 30:])
    assert (got - reference_forward(model, ids)[:, 30:]).abs().max() <= 1e-4


def test_growth_goes_through_the_grow_policy_and_counts_copies(model):
    asked = []

    def grow(rid, need, cap):
        asked.append((need, cap))
        return need  # exact: reallocate at every growth

    kv = make_store(grow=grow)
    kv.add(0, capacity_tokens=8)
    ids = random_ids(12)
    for t in range(12):
        forward(model, kv, [0], ids[:, t:t + 1])
    assert kv.num_allocs == 1 + 4 and asked[0] == (8, 0)
    assert kv.copy_bytes > 0


def test_measured_block_shares_follow_the_blocks_whatever_their_tier(model):
    """Shares are mapped back to block indices: quantizing block 0 moves its keys to the front
    of the attended order (segments first), yet each block keeps (nearly) its share."""
    ids = random_ids(58)
    shares = []
    for prec in (Precision.FP16, Precision.INT8):
        kv = make_store()
        kv.add(0)
        forward(model, kv, [0], ids[:, :56])
        kv.set_precision(0, 1, prec)  # the middle block moves to the INT8 segment
        step = PagedStep(kv, [0], 2, torch.float32, measure_attention=True)
        positions = torch.tensor([[56, 57]])
        with torch.inference_mode():
            model(ids[:, 56:], step, positions)
        got = step.block_shares(CFG.num_layers)[0]
        assert len(got) == 4 and abs(float(got.sum()) - 1) < 1e-6
        shares.append(got)
    assert (shares[0] - shares[1]).abs().max() < 0.01
    assert shares[0].max() - shares[0].min() > 0.02  # not uniform: the test can tell blocks apart


def test_measured_attention_keeps_the_share_of_an_absent_block():
    import numpy as np

    from sim.quality.attention import MeasuredAttention

    att = MeasuredAttention()
    att.record(7, np.array([0.5, 0.2, 0.3]))
    att.record(7, np.array([0.0, 0.6, 0.4]))  # block 0 offloaded: drew nothing
    assert np.allclose(att.mass[7], [0.5, 0.8, 0.7])
    assert np.allclose(att.access[7], [1, 1, 0])  # above a uniform share: 1/3, then 1/2
    # the absent block keeps its weight against the average block: 0.5 of 3 resident blocks is
    # 1.5x average; the resident ones 0.6 and 0.4 of 2 are 1.2x and 0.8x
    assert np.allclose(att.shares(7, 3), np.array([1.5, 1.2, 0.8]) / 3.5)
    resident = np.array([False, True, True])
    assert np.allclose(att.advance(7, resident, 4), [0, 0.6, 0.4])
    rel = att.relevance(7, 3)  # the latest shares x 3, undiluted: [1, 1.2, 0.8]
    assert abs(rel[0]) < 1e-9 and rel[1] > 0 > rel[2]


def test_an_absent_blocks_share_is_diluted_as_the_context_grows():
    """A block evicted when 2 blocks shared the attention could not draw its old share among 8:
    what it would draw if restored scales with resident blocks then / now."""
    import numpy as np

    from sim.quality.attention import MeasuredAttention

    att = MeasuredAttention()
    att.record(1, np.array([0.5, 0.5]))
    for n in range(3, 10):  # block 1 evicted; the others share evenly as the context grows
        shares = np.full(n, 1.0 / (n - 1))
        shares[1] = 0.0
        att.record(1, shares)
    got = att.shares(1, 9)
    # 8 resident blocks at 1/8 each, weight 1; block 1 at 0.5 of 2, weight 1: all equal
    assert np.allclose(got, np.full(9, 1 / 9))
    # undiluted, it would have kept 0.5 against 1/8: 4x what it can draw
    assert np.allclose(att.advance(1, np.arange(9) != 1, 1), np.where(np.arange(9) != 1, 1 / 8, 0))


@pytest.mark.parametrize("away, tol", [(Precision.OFFLOADED, 0.0), (Precision.INT8, 0.01)])
def test_a_block_restored_into_a_full_exact_size_arena_keeps_every_token(away, tol):
    """Restoring a block grows a full arena: the copy covers the arena's live tokens only (the
    block being restored is not in it yet).  Found by benchmarks/soak.py."""
    bt = 4
    kv = PagedKV(num_layers=1, num_kv_heads=1, head_dim=2, block_tokens=bt, group=4,
                 dtype=torch.float32, grow=lambda rid, need, cap: need)  # exact-size arenas
    kv.add(0, capacity_tokens=10)

    def put(n: int) -> None:
        offset, start = kv.arena_tokens(0), kv.num_tokens(0)
        kv.reserve(0, n)
        x = torch.arange(start, start + n, dtype=torch.float32).reshape(1, n, 1).expand(1, n, 2)
        kv.write(0, 0, x, x, offset)
        kv.append(0, n)

    with torch.inference_mode():
        put(10)  # blocks 0 and 1 full, 2 tokens in the tail
        kv.set_precision(0, 0, away)
        put(4)  # the arena is full again
        kv.set_precision(0, 0, Precision.FP16)  # grows the arena
        k, _ = kv.layer_kv(0, 0)
    assert torch.allclose(k[0, :, 0], torch.arange(14, dtype=torch.float32), atol=tol, rtol=0)


def test_attention_measured_a_few_query_rows_at_a_time_is_the_same_measurement():
    """The torch executor measures a prompt's attention ``rows`` query rows at a time; the
    shares are those of the whole matrix at once, with any mask shape and a ragged last chunk."""
    from adapters.kv.paged_step import attention_probs, attention_probs_chunked

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 70, 16, generator=g), torch.randn(2, 3, 50, 16, generator=g)
    causal = torch.arange(50)[None, :] <= torch.arange(70)[:, None] % 50  # [rows, S]
    for mask in (None, causal, causal[None, None].repeat(2, 1, 1, 1)):
        whole = attention_probs(q, k, mask)
        for rows in (1, 16, 69, 70, 256):
            assert torch.allclose(attention_probs_chunked(q, k, mask, rows), whole, atol=1e-6)


def test_the_simulator_charges_the_arena_shifts_the_real_store_makes():
    """For the same tiering decisions (random moves between every tier, 1-3 a pass), the FP16
    bytes the engine charges for keeping the arena compact (``kv_shift_bytes``) are the bytes
    the real store copies to do it, pass by pass; and the passes it charges apart from their
    bytes (``kv_shift_passes``: evictions and offloads out of the arena, restores into it) are
    the ones the store makes."""
    import dataclasses
    from typing import ClassVar

    import numpy as np

    from policies import TieringDecision
    from sim.config.scenario import AttentionConfig, QualityConfig
    from sim.engine.kv_store import PagedKVStore
    from sim.engine.retier import Retierer
    from sim.quality.attention import AttentionModel
    from sim.quality.model import penalties

    @dataclasses.dataclass
    class Scripted:
        kind: str = "scripted"
        observes_blocks: ClassVar[bool] = False
        queued: list = dataclasses.field(default_factory=list)

        def decide(self, obs):
            return self.queued.pop()

    L, K, D = CFG.num_layers, CFG.num_kv_heads, CFG.head_dim
    tokens, full = 12 * BT + 5, 12
    store = PagedKVStore(BT, block_bytes(L * 2 * K * D, BT, BT), 10**9, 10**9, 8)
    store.admit(0, tokens, tokens + 8, Precision.FP16)
    policy = Scripted()
    retier = Retierer(policy, AttentionModel(AttentionConfig(), 0), penalties(QualityConfig()),
                      L * 2 * K * D * BT)
    kv = PagedKV(num_layers=L, num_kv_heads=K, head_dim=D, block_tokens=BT, group=BT)
    kv.add(0, capacity_tokens=tokens + BT)
    with torch.inference_mode():
        kv.requests[0].arena[:, :, :, :tokens].normal_()
    kv.append(0, tokens)
    block = torch.zeros(L, 2, K, BT, D, dtype=torch.float16)
    rng = np.random.default_rng(0)
    shifted = passes = 0
    for step in range(1, 80):
        changes = tuple((0, int(b), int(rng.integers(len(Precision))))
                        for b in rng.choice(full, size=int(rng.integers(1, 4)), replace=False))
        policy.queued.append(TieringDecision(changes))
        retier.retier(store, [0], step)
        pending = retier.pending.take()
        charged = pending.shift_bytes
        desired = np.frombuffer(bytes(store.blocks_raw(0)), dtype=np.uint8)[:full]
        actual = np.array([kv.block_precision(0, i) for i in range(full)])
        changed = np.flatnonzero(desired != actual)
        before, passes_before = kv.copy_bytes, kv.shift_passes
        kv.set_precisions(0, changed.tolist(), desired[changed].tolist(), lambda *_: block)
        assert charged == kv.copy_bytes - before, step
        assert pending.shift_passes == kv.shift_passes - passes_before, step
        shifted += charged
        passes += pending.shift_passes
    assert shifted > 0 and passes > 0
