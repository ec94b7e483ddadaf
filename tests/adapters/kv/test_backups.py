"""FP16 backups in the torch paged store (``keep_backup``, the paper's reversible quantization):
a block demoted with one is restored exactly, re-quantized from it, offloaded without a second
copy; a quantized block without one is recomputed when it rises.  (The executor keeps the copies
the engine's store keeps: ``tests/adapters/torch_backend/test_executor.py``.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.kv.paged import PagedKV  # noqa: E402
from adapters.model.transformer import prefill  # noqa: E402
from policies import Precision  # noqa: E402
from tests.adapters.kv.tiny_model import BT, CFG, filled_store  # noqa: E402

P = Precision
BLOCK_BYTES = CFG.num_layers * 2 * CFG.num_kv_heads * BT * CFG.head_dim * 4  # float32 here


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (1, 70), generator=torch.Generator().manual_seed(3))


def _filled(model, ids: torch.Tensor) -> PagedKV:
    """4 full blocks and a partial one."""
    return filled_store(model, ids)


def _layers(kv: PagedKV) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in kv.layer_kv(0, layer)) for layer in range(CFG.num_layers)]


def _recompute(model, ids, calls: list[int]):
    def run(rid: int, block: int) -> torch.Tensor:
        calls.append(block)
        end = (block + 1) * BT
        cache = model.new_cache(1, end)
        prefill(model, ids[:, :end], cache)
        s = slice(block * BT, end)
        return torch.stack([cache.k[:, 0, :, s], cache.v[:, 0, :, s]], dim=1)
    return run


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def test_a_backed_up_block_is_restored_exactly_and_its_copy_is_counted_on_the_host(model, ids):
    kv = _filled(model, ids)
    before = _layers(kv)
    kv.set_precisions(0, [0, 1, 2], [int(P.INT4)] * 3, None, [True, True, False])
    held = kv.bytes_by_precision()
    assert held["backup"] == 2 * BLOCK_BYTES
    assert kv.device_bytes() == sum(v for k, v in held.items()
                                    if k not in ("offloaded", "evicted", "backup"))
    calls: list[int] = []
    for b in (0, 1):
        kv.set_precision(0, b, P.FP16, _recompute(model, ids, calls))
    assert calls == [] and kv.bytes_by_precision()["backup"] == 0
    kv.set_precision(0, 2, P.FP16)  # no copy and no recompute function: its codes dequantized
    after = _layers(kv)
    assert not _same(before, after)
    kv.set_precision(0, 2, P.INT4)
    kv.set_precision(0, 2, P.FP16, _recompute(model, ids, calls))  # no copy: recomputed
    assert calls == [2]
    for (k0, v0), (k1, v1) in zip(before, _layers(kv)):
        assert (k1 - k0).abs().max() <= 1e-5 and (v1 - v0).abs().max() <= 1e-5


def test_a_backed_up_block_is_requantized_from_its_copy_not_from_its_codes(model, ids):
    """INT8 then INT4 with a copy holds the codes of FP16 straight to INT4; without one it holds
    INT8's dequantized values quantized again."""
    direct, via, lossy = (_filled(model, ids) for _ in range(3))
    direct.set_precision(0, 1, P.INT4)
    via.set_precision(0, 1, P.INT8, backup=True)
    via.set_precision(0, 1, P.INT4, backup=True)
    lossy.set_precision(0, 1, P.INT8)
    lossy.set_precision(0, 1, P.INT4)
    seg = direct.requests[0].segments[P.INT4]
    assert all(torch.equal(a, b) for a, b in zip(seg.tensors(),
                                                 via.requests[0].segments[P.INT4].tensors()))
    assert not all(torch.equal(a, b) for a, b in zip(
        seg.tensors(), lossy.requests[0].segments[P.INT4].tensors()))
    assert via.bytes_by_precision()["backup"] == BLOCK_BYTES  # the copy is still kept
    via.set_precision(0, 1, P.INT8, backup=True)  # up to INT8: from the copy too
    again = _filled(model, ids)
    again.set_precision(0, 1, P.INT8)
    assert all(torch.equal(a, b) for a, b in zip(
        again.requests[0].segments[P.INT8].tensors(), via.requests[0].segments[P.INT8].tensors()))


def test_offloading_a_backed_up_block_keeps_its_copy_and_eviction_drops_it(model, ids):
    kv = _filled(model, ids)
    before = _layers(kv)
    kv.set_precision(0, 0, P.INT8, backup=True)
    kv.set_precision(0, 3, P.INT8, backup=True)
    copy = kv.requests[0].backup[0]
    kv.set_precision(0, 0, P.OFFLOADED)
    assert kv.requests[0].host[0] is copy  # no second copy
    kv.set_precision(0, 3, P.EVICTED)
    held = kv.bytes_by_precision()
    assert held["backup"] == 0 and held["offloaded"] == BLOCK_BYTES
    kv.set_precision(0, 0, P.FP16)
    kv.set_precision(0, 3, P.FP16, _recompute(model, ids, []))
    for (k0, v0), (k1, v1) in zip(before, _layers(kv)):
        assert (k1 - k0).abs().max() <= 1e-5 and (v1 - v0).abs().max() <= 1e-5
