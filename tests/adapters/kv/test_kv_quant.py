"""KV-cache quantization kernels: error bounds, exact grid reconstruction, packing, byte model
agreement with sim.engine.kv_store.block_bytes, and the outlier-channel comparison of the two
schemes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.kv.quant import (  # noqa: E402
    dequantize,
    group_scales,
    nbytes,
    pack,
    quantize,
    unpack,
)
from policies import Precision  # noqa: E402
from sim.engine.kv_store import block_bytes  # noqa: E402

CASES = [(b, s, k) for b in (8, 4, 2) for s in ("kivi", "blockwise") for k in ("key", "value")]
PREC = {8: Precision.INT8, 4: Precision.INT4, 2: Precision.INT2}


def _fp16_tol(x: torch.Tensor) -> float:
    # stored scale and zero point are FP16 (relative rounding 2^-11); the reconstruction error may
    # exceed scale/2 by about that much of the data's magnitude
    return 2.0 ** -10 * float(x.abs().max()) + 1e-6


@pytest.mark.parametrize("bits,scheme,kind", CASES)
@pytest.mark.parametrize("shape,group", [((3, 16, 64), 64), ((2, 40, 48), 32), ((1, 7, 5), 4)])
def test_round_trip_within_asymmetric_bound(bits, scheme, kind, shape, group):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 0.5
    q = quantize(x, bits, scheme, group, kind=kind)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype
    err = (x - y).abs()
    bound = group_scales(q) / 2 + _fp16_tol(x)
    assert bool((err <= bound).all()), float((err - bound).max())


def test_fp16_input_keeps_dtype_and_constant_groups_are_exact():
    x = torch.full((2, 8, 16), 1.5, dtype=torch.float16)
    for bits in (8, 4, 2):
        for scheme in ("kivi", "blockwise"):
            y = dequantize(quantize(x, bits, scheme, 8, kind="key"))
            assert y.dtype == torch.float16 and torch.equal(y, x)


@pytest.mark.parametrize("bits,scheme,kind", CASES)
def test_values_on_the_grid_are_reconstructed_exactly(bits, scheme, kind):
    torch.manual_seed(1)
    h, t, d, group = 2, 32, 32, 16
    qmax = (1 << bits) - 1
    codes = torch.randint(0, qmax + 1, (h, t, d)).float()
    # make every group (along T for KIVI keys, along D otherwise) hit both 0 and qmax
    per_channel = scheme == "kivi" and kind == "key"
    if per_channel:
        codes[:, ::group, :], codes[:, 1::group, :] = 0, qmax
    else:
        codes[:, :, ::group], codes[:, :, 1::group] = 0, qmax
    scale, zero = 2.0 ** -5, -0.75                 # exactly representable in FP16
    x = codes * scale + zero
    y = dequantize(quantize(x, bits, scheme, group, kind=kind))
    assert torch.equal(y, x)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("n", [1, 3, 7, 64, 101])
def test_pack_round_trip(bits, n):
    torch.manual_seed(n)
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack(packed, bits, n), codes)


def test_pack_layout_low_bits_first():
    assert pack(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [0b00111001]


def _layer_bytes(bits, scheme, h, t, d, group):
    torch.manual_seed(2)
    k, v = torch.randn(h, t, d), torch.randn(h, t, d)
    return (nbytes(quantize(k, bits, scheme, group, kind="key"))
            + nbytes(quantize(v, bits, scheme, group, kind="value")))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_nbytes_matches_simulator_block_bytes(bits):
    h, t, d, group = 3, 16, 64, 64
    expected = block_bytes(values_per_token=2 * h * d, block_tokens=t, group=group)[PREC[bits]]
    # blockwise: groups along D, 64 | 64 -> H*T groups per tensor, exactly values/group
    assert _layer_bytes(bits, "blockwise", h, t, d, group) == expected
    # KIVI values are the same layout; KIVI keys group along T: a 64-token block matches exactly
    t64 = 64
    exp64 = block_bytes(values_per_token=2 * h * d, block_tokens=t64, group=group)[PREC[bits]]
    assert _layer_bytes(bits, "kivi", h, t64, d, group) == exp64
    # ...but a 16-token block has a partial 16-token group per channel: H*D = 192 key groups instead
    # of H*T*D/64 = 48, i.e. (192 - 48) extra scale/zero pairs of 4 bytes each
    assert _layer_bytes(bits, "kivi", h, t, d, group) == expected + (h * d - h * t * d // group) * 4


def test_int4_saves_at_least_70_percent_vs_fp16():
    h, t, d, group = 3, 16, 64, 64
    fp16 = 2 * h * t * d * 2
    for scheme, tokens in (("blockwise", t), ("kivi", 64)):
        q = _layer_bytes(4, scheme, h, tokens, d, group)
        saving = 1 - q / (fp16 * tokens // t)
        assert saving >= 0.70, (scheme, saving)        # 1 - 4.5/16 = 71.9 %


def _outlier_keys(seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)
    k = torch.randn(4, 128, 64)
    k[:, :, torch.tensor([3, 17, 40, 58])] *= 10.0   # a few outlier channels, as real keys have
    return k


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """mean |x - x_hat| / mean |x|."""
    return float((x - y).abs().mean() / x.abs().mean())


def outlier_table(group: int = 32) -> dict[tuple[int, str], float]:
    k = _outlier_keys()
    return {(b, s): relative_error(k, dequantize(quantize(k, b, s, group, kind="key")))
            for b in (8, 4, 2) for s in ("kivi", "blockwise")}


def test_kivi_per_channel_keys_beat_blockwise_on_outlier_channels(capsys):
    table = outlier_table()
    with capsys.disabled():
        print("\nkeys with 4/64 outlier channels x10, group 32, mean|err|/mean|x|")
        for b in (8, 4, 2):
            print(f"  INT{b}: kivi {table[b, 'kivi']:.4f}  blockwise {table[b, 'blockwise']:.4f}")
    for b in (8, 4, 2):
        assert table[b, "kivi"] < 0.5 * table[b, "blockwise"], (b, table)
