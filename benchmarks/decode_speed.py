"""Decode speed of our engine against transformers' ``generate``, on the same SmolLM2-135M weights.

Ours: ``adapters.decoding.greedy.generate`` (what ``infer-os generate`` runs): ``prefill`` then one
``decode_one_token`` per token over a contiguous K/V cache.  Theirs: ``LlamaForCausalLM`` built
from the same dequantized GGUF state dict, ``generate(do_sample=False)`` with its default cache.
Batch 1, greedy, the same Shakespeare prompt, the same number of new tokens (neither stops at
the end-of-sequence token), the same dtype; the engines alternate within each repeat so that both
see the same machine noise.  Decode tok/s = (new tokens - 1) / time after the first new token.

The roofline beside it: a decode step reads every weight once (and the context's K/V), so
tok/s <= stream rate / bytes per token.  The stream rate is measured here, not assumed: the
model's own linear weights through ``F.linear`` at batch 1 (what a decode step runs), best of 5
passes.  ``fraction`` = measured tok/s over that limit; achieved GB/s = bytes per token x tok/s.

    python benchmarks/decode_speed.py [--prompt-tokens 256] [--new-tokens 128] [--repeats 5]
        [--dtypes float32,bfloat16] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import transformers

from adapters.decoding.greedy import Sampling, generate, synchronize
from adapters.model.gguf_loader import find_smollm2_gguf, read_gguf
from adapters.model.hf_loader import model_from_state_dict
from adapters.model.loading import DTYPES, describe_device
from adapters.model.text import play_text
from adapters.model.tokenizer import tokenizer_from_gguf


@dataclass
class Run:
    """One generation: the new token ids, seconds to the first new token, decode tok/s."""

    token_ids: list[int]
    prefill_s: float
    decode_tok_s: float


class _Clock:
    """A ``generate`` streamer that only timestamps: the first ``put`` is the prompt, the second
    the first new token, the last one the last token."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value: torch.Tensor) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_model(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype,
             device: torch.device) -> transformers.LlamaForCausalLM:
    """transformers' Llama with our weights; no EOS, so it never stops early."""
    keys = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    keys["eos_token_id"] = None
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**keys))
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def run_hf(model, prompt: list[int], new_tokens: int, device: torch.device) -> Run:
    ids = torch.tensor([prompt], device=device)
    clock = _Clock(device)
    synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, streamer=clock)
    first, last = clock.times[1], clock.times[-1]
    return Run(out[0, len(prompt):].tolist(), first - t0, (new_tokens - 1) / (last - first))


def run_ours(model, prompt: list[int], new_tokens: int) -> Run:
    g = generate(model, prompt, new_tokens, Sampling(ignore_eos=True))
    return Run(g.token_ids, g.prefill_s, g.decode_tok_s)


def weight_bytes(model) -> int:
    """Bytes a decode step streams: every linear weight (the LM head included, once if tied)."""
    ws = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(w.numel() * w.element_size() for w in ws.values())


def kv_bytes(model, context: float) -> float:
    """K/V bytes one decode step reads at ``context`` tokens."""
    c, w = model.cfg, model.tok_embeddings.weight
    return context * c.num_layers * 2 * c.num_kv_heads * c.head_dim * w.element_size()


@torch.inference_mode()
def stream_rate(model, passes: int = 5) -> float:
    """Bytes per second of batch-1 ``F.linear`` over the model's linear weights (best pass)."""
    ws = list({id(m.weight): m.weight for m in model.modules()
               if isinstance(m, torch.nn.Linear)}.values())
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in ws}
    best = float("inf")
    for _ in range(passes):
        synchronize(ws[0].device)
        t0 = time.perf_counter()
        for w in ws:
            torch.nn.functional.linear(xs[w.shape[1]], w)
        synchronize(ws[0].device)
        best = min(best, time.perf_counter() - t0)
    return weight_bytes(model) / best


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bench(dtype_name: str, config: dict, state: dict, prompt: list[int], args) -> list[str]:
    dtype, device = DTYPES[dtype_name], torch.device(args.device)
    ours = model_from_state_dict(config, state, dtype=dtype, device=device)
    theirs = hf_model(config, state, dtype, device)
    engines = {"ours": lambda n: run_ours(ours, prompt, n),
               "transformers": lambda n: run_hf(theirs, prompt, n, device)}
    for engine in engines.values():  # warm-up: allocator, oneDNN / cuBLAS handles
        engine(8)
    runs: dict[str, list[Run]] = {name: [] for name in engines}
    for rep in range(args.repeats):
        order = list(engines) if rep % 2 == 0 else list(engines)[::-1]
        for name in order:
            runs[name].append(engines[name](args.new_tokens))
    rate = stream_rate(ours)
    per_token = weight_bytes(ours) + kv_bytes(ours, len(prompt) + args.new_tokens / 2)
    limit = rate / per_token
    ratios = [o.decode_tok_s / t.decode_tok_s for o, t in zip(runs["ours"], runs["transformers"])]
    agree = min(same_prefix(o.token_ids, t.token_ids)
                for o, t in zip(runs["ours"], runs["transformers"]))
    rows = []
    for name, rs in runs.items():
        tok_s = [r.decode_tok_s for r in rs]
        ratio = f"{statistics.median(ratios):.2f}x" if name == "ours" else "1.00x"
        med = statistics.median(tok_s)
        rows.append(f"| {dtype_name} | {name} | {statistics.median(r.prefill_s for r in rs):.3f} "
                    f"| {med:.1f} | {min(tok_s):.1f}-{max(tok_s):.1f} "
                    f"| {ratio} | {agree}/{args.new_tokens} | {per_token / 1e6:.0f} "
                    f"| {med * per_token / 1e9:.1f} | {rate / 1e9:.1f} | {limit:.1f} "
                    f"| {med / limit:.0%} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = find_smollm2_gguf()
    config, state = read_gguf(path)
    prompt = tokenizer_from_gguf(path).encode(play_text("hamlet"))[:args.prompt_tokens]
    print(f"SmolLM2-135M ({path.name}, dequantized), {describe_device(torch.device(args.device))}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, transformers "
          f"{transformers.__version__}; batch 1, greedy, {len(prompt)} prompt tokens (Hamlet), "
          f"{args.new_tokens} new tokens, medians of {args.repeats} interleaved repeats\n")
    print("| dtype | engine | prefill s | decode tok/s | range | ours / transformers "
          "(median of paired ratios) | tokens equal | MB / token | achieved GB/s "
          "| stream GB/s | limit tok/s | fraction of limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        for row in bench(name, config, state, prompt, args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
