"""The quantized blocks of one request at one precision (``adapters.kv.paged``'s segments): the
packed codes, FP16 scales and zero points of its blocks, stacked ``[n_blocks, ...]``.

A segment grows in place: its tensors are views of buffers with room for more blocks (half as
many again as it holds when it outgrows them), so a block quantized as it fills costs its own
quantizing, not a copy of every block quantized before it (measured: an INT8 block filled at a
2,048-token context took 7.3 ms, 3.0 ms of it quantizing, the rest copying the segment).  A
prompt's blocks go into a segment with room for exactly them (``append``'s ``expect``).  The
views are what is held (``nbytes``); the buffers, spare room included, are what is reserved
(``reserved_nbytes``).  A block leaves in place (``drop``): the segment's last block takes its
row, and the room stays reserved."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adapters.kv import quant as kv_quant

NAMES = ("k_data", "k_scales", "k_zeros", "v_data", "v_scales", "v_zeros")
GROWTH = 1.5  # a full segment's buffers grow to this many times the blocks it holds, plus the new


@dataclass
class Segment:
    """The quantized blocks of one request at one precision, stacked in ``blocks`` order."""

    blocks: list[int] = field(default_factory=list)
    k_data: torch.Tensor | None = None  # uint8 [n, L, bytes per layer]
    k_scales: torch.Tensor | None = None  # fp16 [n, L, K, A, G]
    k_zeros: torch.Tensor | None = None
    v_data: torch.Tensor | None = None
    v_scales: torch.Tensor | None = None
    v_zeros: torch.Tensor | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # each view's storage

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, name) for name in NAMES) if t is not None]

    def nbytes(self) -> int:
        """Bytes of the blocks it holds."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def reserved_nbytes(self) -> int:
        """Bytes of its buffers, spare room included."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    def append(self, blocks: list[int], parts: dict[str, torch.Tensor],
               expect: int = 0) -> None:
        """Add ``blocks`` (their tensors in ``parts``, each ``[len(blocks), ...]``, as
        ``quantize_blocks`` gives them) after the ones it holds; ``expect``: the blocks it will
        hold once the caller's next appends are done (room for them, if it must grow now)."""
        n, m = len(self.blocks), len(blocks)
        for name in NAMES:
            new, buf = parts[name], self.buffers.get(name)
            if buf is None or buf.shape[0] < n + m:
                room = max(n + m if n == 0 else int(GROWTH * n) + m, expect)
                grown = torch.empty((room, *new.shape[1:]), dtype=new.dtype, device=new.device)
                if n:
                    grown[:n] = getattr(self, name)
                buf = self.buffers[name] = grown
            buf[n:n + m] = new
            setattr(self, name, buf[:n + m])
        self.blocks.extend(blocks)

    def drop(self, i: int) -> None:
        """Remove the ``i``-th block it holds, in place: the last block takes its row (one
        block's copy; a segment's order is free, ``blocks`` says which block each row holds).
        Copying the rest into fresh tensors cost a whole segment's copy and its page faults on
        every re-quantizing move (measured: a single-block move from a backup read 25-34 %
        slower than the engine, which charges the block's own work)."""
        last = len(self.blocks) - 1
        if i != last:
            for name in NAMES:
                self.buffers[name][i].copy_(self.buffers[name][last])
            self.blocks[i] = self.blocks[last]
        self.blocks.pop()
        for name in NAMES:
            setattr(self, name, self.buffers[name][:last])


def quantize_blocks(kv: torch.Tensor, bits: int, group: int) -> dict[str, torch.Tensor]:
    """K/V of n blocks ``[n, L, 2, K, bt, D]`` -> a segment's tensors for them, each
    ``[n, L, ...]`` (``adapters.kv.quant``'s KIVI layouts: keys per channel, values per token);
    the same codes, block for block, as quantizing each block alone."""
    n, L, _, K, bt, D = kv.shape
    qk = kv_quant.quantize(kv[:, :, 0].reshape(n * L * K, bt, D), bits, "kivi", group, "key")
    qv = kv_quant.quantize(kv[:, :, 1].reshape(n * L * K, bt, D), bits, "kivi", group, "value")
    out = {}
    for kind, q in (("k", qk), ("v", qv)):
        out[f"{kind}_data"] = q.data.reshape(n, L, -1)
        out[f"{kind}_scales"] = q.scales.reshape(n, L, K, *q.scales.shape[1:])
        out[f"{kind}_zeros"] = q.zeros.reshape(n, L, K, *q.zeros.shape[1:])
    return out


def dequantize(data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
               per_channel: bool, shape: tuple[int, int, int], group: int) -> torch.Tensor:
    """Packed codes ``[n, bytes]`` with scales/zeros ``[n, K, A, G]`` of n blocks of one layer
    -> float32 ``[K, n * bt, D]`` (``shape`` = (K, bt, D)): ``kv_quant.dequantize`` for them at
    once (K per channel, V per token)."""
    n, (K, bt, D) = data.shape[0], shape
    a, length = (D, bt) if per_channel else (bt, D)
    codes = kv_quant.unpack(data.reshape(-1), bits, n * K * a * length)
    g = kv_quant.grouped(codes.reshape(n, K, a, length).float(), group)
    x = (g * scales.float().unsqueeze(-1) + zeros.float().unsqueeze(-1)).reshape(
        n, K, a, -1)[..., :length]
    if per_channel:
        x = x.transpose(2, 3)  # [n, K, bt, D]
    return x.permute(1, 0, 2, 3).reshape(K, n * bt, D)
