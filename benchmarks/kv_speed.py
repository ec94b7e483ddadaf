"""Decode speed with a quantized KV cache: FP16 against INT8 / INT4 (and INT2), fused kernel
against the torch path, on SmolLM2-135M.

Each request holds a context of C tokens in an ``adapters.kv.paged.PagedKV`` (the torch
executor's store, FP16 arena), every full block at the precision under test; then the model
decodes N tokens for the batch through ``PagedStep``, as ``TorchExecutor.forward`` does, and we
time those steps.  ``fused``: ``adapters.kv.fused`` (one pass over the packed codes per layer);
``torch``: the fallback (dequantize every block, concatenate, widen, SDPA), what the executor ran
before.  The context's K/V are random normal values (attention speed does not depend on them;
a real 8k-token prefill of four requests would take minutes on a CPU); the positions are real.
The cases alternate within each repeat; tok/s = B * N / time, and each ratio is the median of
per-repeat ratios against FP16 on the same path in the same repeat.

    python benchmarks/kv_speed.py [--contexts 512,2048,8000] [--batches 1,4] [--new-tokens 16]
        [--repeats 3] [--precisions fp16,int8,int4] [--paths fused,torch] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from adapters.kv import fused
from adapters.kv.paged import PagedKV
from adapters.kv.paged_step import PagedStep
from adapters.model.gguf_loader import find_smollm2_gguf, read_gguf
from adapters.model.hf_loader import model_from_state_dict
from policies import Precision


@torch.inference_mode()
def make_store(model, batch: int, context: int, precision: Precision, block: int,
               group: int) -> PagedKV:
    cfg = model.cfg
    kv = PagedKV(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                 block_tokens=block, group=group, dtype=torch.float16)
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.num_kv_heads, context, cfg.head_dim)
    layers = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
              for _ in range(cfg.num_layers)]
    for rid in range(batch):
        kv.add(rid, context + 64)
        kv.reserve(rid, context)
        for layer, (k, v) in enumerate(layers):
            kv.write(rid, layer, k, v, 0)
        kv.append(rid, context)
        if precision != Precision.FP16:
            for b in range(context // block):
                kv.set_precision(rid, b, precision)
    return kv


@torch.inference_mode()
def decode(model, kv: PagedKV, context: int, new_tokens: int) -> float:
    """Decode ``new_tokens`` steps for every request of ``kv``; -> seconds; rolls back after."""
    rids = sorted(kv.requests)
    B = len(rids)
    token = torch.full((B, 1), 42)
    t0 = time.perf_counter()
    for i in range(new_tokens):
        step = PagedStep(kv, rids, 1, torch.float32)
        pos = torch.full((B, 1), context + i)
        hidden = model.hidden_states(token, step, pos)
        token = model.output(model.norm(hidden[:, -1])).argmax(-1, keepdim=True)
        step.commit()
    seconds = time.perf_counter() - t0
    for rid in rids:
        kv.truncate(rid, context)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="512,2048,8000")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default="fp16,int8,int4")
    ap.add_argument("--paths", default="fused,torch")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.paths.split(",")
    if "fused" in paths and not fused.available():
        raise SystemExit(f"the fused kernel is unavailable: {fused.unavailable_reason()}")
    config, state = read_gguf(find_smollm2_gguf())
    model = model_from_state_dict(config, state, dtype=torch.float32, device=torch.device("cpu"))
    precs = [Precision[p.upper()] for p in args.precisions.split(",")]
    print(f"SmolLM2-135M fp32, FP16 KV arena, blocks of {args.block} tokens, groups of "
          f"{args.group}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.new_tokens} decode steps, medians of {args.repeats} interleaved repeats\n")
    print("| batch | context | path | precision | decode tok/s | range | vs FP16 (same path) "
          "| vs torch FP16 |")
    print("|---|---|---|---|---|---|---|---|")
    for B in map(int, args.batches.split(",")):
        for C in map(int, args.contexts.split(",")):
            stores = {p: make_store(model, B, C, p, args.block, args.group) for p in precs}
            cases = [(path, p) for path in paths for p in precs]
            rates: dict[tuple[str, Precision], list[float]] = {c: [] for c in cases}
            decode(model, stores[precs[0]], C, 2)  # warm-up
            for rep in range(args.repeats):
                for path, p in cases if rep % 2 == 0 else cases[::-1]:
                    os.environ["INFER_OS_KV_KERNEL"] = "auto" if path == "fused" else "torch"
                    rates[(path, p)].append(B * args.new_tokens
                                            / decode(model, stores[p], C, args.new_tokens))
            os.environ.pop("INFER_OS_KV_KERNEL", None)
            base_path = "torch" if "torch" in paths else paths[0]
            for path, p in cases:
                r = rates[(path, p)]
                same = statistics.median(a / b for a, b in zip(r, rates[(path, precs[0])]))
                old = statistics.median(a / b for a, b in zip(r, rates[(base_path, precs[0])]))
                print(f"| {B} | {C} | {path} | {p.name} | {statistics.median(r):.1f} "
                      f"| {min(r):.1f}-{max(r):.1f} | {same:.2f}x | {old:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
