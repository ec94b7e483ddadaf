"""Segments of quantized blocks in the torch paged store: blocks moved in one pass hold what
blocks moved one by one hold; a segment grows in place, keeps spare room reserved rather than
held, lets a block leave in place, and is made with room for the blocks the engine expects."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from policies import Precision  # noqa: E402
from tests.adapters.kv.tiny_model import BT, filled_store, forward, random_ids  # noqa: E402


def test_blocks_moved_in_one_pass_hold_what_blocks_moved_one_by_one_hold(model):
    """``set_precisions`` (one compaction per target) against ``set_precision`` per block: the
    same codes, host copies, arena and attention, whatever mix of targets (quantized, offloaded,
    evicted) and current tiers (a block already INT8 bound for INT4 among FP ones)."""
    ids = random_ids(140)  # 8 full blocks and a partial one
    one, each = filled_store(model, ids), filled_store(model, ids)
    for kv in (one, each):
        kv.set_precision(0, 4, Precision.INT8)
    P = Precision
    blocks = list(range(9))
    targets = [int(p) for p in (P.INT4, P.INT4, P.INT8, P.OFFLOADED, P.INT4, P.EVICTED, P.FP16,
                                P.EVICTED, P.INT4)]
    moved = one.set_precisions(0, blocks, targets)
    for b, p in zip(blocks, targets):
        each.set_precision(0, b, Precision(p))
    assert sorted(moved) == list(range(8))  # 6 already is FP16; 8 is the partial block
    ra, rb = one.requests[0], each.requests[0]
    assert ra.fp_blocks == rb.fp_blocks == [6]
    assert ra.precision == rb.precision and set(ra.host) == set(rb.host) == {3}
    assert torch.equal(ra.host[3], rb.host[3])
    used = one.arena_tokens(0)
    assert used == each.arena_tokens(0) == BT + 12
    assert torch.equal(ra.arena[:, :, :, :used], rb.arena[:, :, :, :used])
    assert set(ra.segments) == set(rb.segments) == {Precision.INT8, Precision.INT4}
    for prec in ra.segments:
        sa, sb = ra.segments[prec], rb.segments[prec]
        order = [sb.blocks.index(b) for b in sa.blocks]
        assert sorted(sa.blocks) == sorted(sb.blocks)
        for ta, tb in zip(sa.tensors(), sb.tensors()):
            assert torch.equal(ta, tb[order])
    assert one.bytes_by_precision() == each.bytes_by_precision()
    nxt = ids[:, -1:]
    assert torch.allclose(forward(model, one, [0], nxt), forward(model, each, [0], nxt),
                          atol=1e-5)


def test_a_segment_grows_in_place_and_its_spare_room_is_reserved_not_held(model):
    """Blocks quantized one at a time as they fill: the segment's buffers are reallocated a
    few times (not once a block), it holds exactly its blocks' bytes, reserves more, and is
    attended to as a segment built in one pass."""
    ids = random_ids(16 * BT + 1)
    grown, once = filled_store(model, ids), filled_store(model, ids)
    seg_bufs = set()
    for b in range(16):
        grown.set_precisions(0, [b], [int(Precision.INT8)])
        seg_bufs.add(grown.requests[0].segments[Precision.INT8].buffers["k_data"].data_ptr())
    once.set_precisions(0, list(range(16)), [int(Precision.INT8)] * 16)
    assert len(seg_bufs) <= 6  # 2, 4, 7, 11, 17 blocks of room: 5 buffers for 16 blocks
    assert grown.requests[0].segments[Precision.INT8].buffers["k_data"].shape[0] == 17
    # a segment one pass makes has room for half as many again (and one)
    assert once.requests[0].segments[Precision.INT8].buffers["k_data"].shape[0] == 25
    assert grown.bytes_by_precision() == once.bytes_by_precision()
    for kv in (grown, once):
        seg = kv.requests[0].segments[Precision.INT8]
        assert seg.reserved_nbytes() > seg.nbytes()
    nxt = ids[:, -1:]
    assert torch.equal(forward(model, grown, [0], nxt), forward(model, once, [0], nxt))


def test_a_block_leaves_its_segment_in_place(model):
    """Evicting blocks out of an INT8 segment keeps its buffers (no copy of the rest): it then
    holds what a segment of the remaining blocks quantized directly holds, row for row by
    ``blocks``, and is attended to as that one is."""
    ids = random_ids(8 * BT + 1)
    left, direct = filled_store(model, ids), filled_store(model, ids)
    left.set_precisions(0, list(range(8)), [int(Precision.INT8)] * 8)
    seg = left.requests[0].segments[Precision.INT8]
    ptrs = {name: t.data_ptr() for name, t in seg.buffers.items()}
    left.set_precisions(0, [2, 7, 0], [int(Precision.EVICTED)] * 3)
    keep = [1, 3, 4, 5, 6]
    direct.set_precisions(0, list(range(8)), [int(Precision.INT8) if b in keep
                                               else int(Precision.EVICTED) for b in range(8)])
    assert {name: t.data_ptr() for name, t in seg.buffers.items()} == ptrs
    other = direct.requests[0].segments[Precision.INT8]
    assert sorted(seg.blocks) == other.blocks == keep
    order = [other.blocks.index(b) for b in seg.blocks]
    for ta, tb in zip(seg.tensors(), other.tensors()):
        assert torch.equal(ta, tb[order])
    assert left.bytes_by_precision() == direct.bytes_by_precision()
    nxt = ids[:, -1:]
    assert torch.allclose(forward(model, left, [0], nxt), forward(model, direct, [0], nxt),
                          atol=1e-5)


def test_a_segment_made_with_room_for_the_expected_blocks_never_grows(model):
    """``expect_blocks``: the prompt's blocks go into a segment with room for the blocks the
    request will hold there, so the blocks that fill later are quantized into that room (one
    buffer throughout); without it the first block to fill after the prompt grows the segment."""
    ids = random_ids(4 * BT + 1)
    for room in (8, 0):
        kv = filled_store(model, ids)
        if room:
            kv.expect_blocks(0, Precision.INT4, room)
        kv.set_precisions(0, [0, 1, 2, 3], [int(Precision.INT4)] * 4)
        seen = set()
        for b in range(4, 8):
            seg = kv.requests[0].segments[Precision.INT4]
            seen.add(seg.buffers["k_data"].data_ptr())
            kv.reserve(0, BT)
            kv.append(0, BT)  # the next block fills (its K/V: whatever the arena holds)
            kv.set_precisions(0, [b], [int(Precision.INT4)])
        seen.add(kv.requests[0].segments[Precision.INT4].buffers["k_data"].data_ptr())
        assert (len(seen) == 1) == bool(room)
        assert kv.requests[0].segments[Precision.INT4].blocks == list(range(8))
