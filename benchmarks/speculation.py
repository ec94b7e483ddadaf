"""Real speculative decoding on SmolLM2-135M (fp32, batch 1, greedy): measured acceptance, decode
tok/s and speedup over no speculation, for every draft source under a fixed k and the adaptive
policies (``dynamic``, ``goodput``), side by side in one run, medians of a few repeats.

    python benchmarks/speculation.py [--repeats 3] [--new-tokens 96] [--prompt-tokens 300]
                                     [--paired]

Draft sources: ``ngram`` (prompt lookup), ``layer-skip`` (the target's first n layers + its norm
and head; SmolLM2 was not trained for early exit), ``model-int8`` (the same GGUF weights with every
linear layer dynamically quantized to int8 by ``torch.ao.quantization.quantize_dynamic``: no
smaller trained model is available offline, so the "draft model" is a cheaper copy of the target,
not a smaller one) and, on request, ``model-bf16`` (the same weights in bfloat16).  A truncated copy
of the target (its first n layers) computes exactly what ``layer-skip`` computes, so it is not
listed twice.

Decode tok/s = (new tokens - 1) / (draft + verify seconds): the prefill (identical for all rows
but ``model-*``, where it includes the draft model's own prefill, shown separately) is left out;
"speedup vs off" is the median over repeats of the ratio to that repeat's ``off`` run (with
``--paired``: to an ``off`` run made just before it), "worst repeat" the lowest of those ratios (a
second table lists them all);
"best / best" the fastest run over the fastest ``off`` run (less sensitive to other processes on a
shared machine); the end-to-end speedup is the median ratio of whole-call wall times, prefill
included.  Policies observe step costs exactly as ``sim.engine.planner`` does (``SpecTracker``:
the plain pass's cost and the verify pass's growth per guess, ``verify_token_s``, separately);
with a ``-marginal`` suffix that growth is folded into the draft cost instead
(``SpecTracker(costs="marginal")``, for policies that ignore ``verify_token_s``).
Every configuration's output is checked against ``off`` (greedy: they must be equal).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Literal

import torch

from adapters.decoding.drafting import DraftSource, LayerSkipDraft, ModelDraft, NgramDraft
from adapters.decoding.speculative import SpecResult, speculative_generate
from adapters.model.gguf_loader import find_smollm2_gguf, read_gguf
from adapters.model.hf_loader import model_from_state_dict
from adapters.model.text import play_text
from adapters.model.tokenizer import tokenizer_from_gguf
from adapters.model.transformer import Transformer
from policies.speculation import FixedSpeculation, NoSpeculation, SpeculationPolicy
from policies.speculation_control import DynamicSpeculation, GoodputSpeculation


def int8_copy(model: Transformer) -> Transformer:
    """The model with every ``nn.Linear`` (LM head included) dynamically quantized to int8."""
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def make_sources(model: Transformer, config: dict, state: dict, names: list[str],
                 skip_layers: int) -> dict[str, Callable[[], DraftSource]]:
    """Factories (fresh state per run) of the requested draft sources."""
    out: dict[str, Callable[[], DraftSource]] = {}
    for name in names:
        if name == "ngram":
            out[name] = lambda: NgramDraft(max_ngram=3)
        elif name == "layer-skip":
            out[f"layer-skip-{skip_layers}"] = lambda: LayerSkipDraft(model, skip_layers)
        elif name == "model-int8":
            q = int8_copy(model)
            out[name] = lambda q=q: ModelDraft(q)
        elif name == "model-bf16":
            b = model_from_state_dict(config, state, dtype=torch.bfloat16)
            out[name] = lambda b=b: ModelDraft(b)
        else:
            raise SystemExit(f"unknown source {name!r}")
    return out


Costs = Literal["planner", "marginal"]


def make_policies(names: list[str], k: int) -> dict[str, tuple[SpeculationPolicy, Costs]]:
    """Policies by label, each with the cost attribution of its observations
    (``adapters.decoding.speculative.SpecTracker``): a ``-marginal`` suffix folds the extra verify
    time of a drafting step into the draft cost; the plain names observe costs as
    ``sim.engine.planner`` does."""
    table: dict[str, SpeculationPolicy] = {
        "fixed": FixedSpeculation(k=k), "dynamic": DynamicSpeculation(),
        "goodput": GoodputSpeculation()}
    out: dict[str, tuple[SpeculationPolicy, Costs]] = {}
    for n in names:
        base, _, suffix = n.partition("-")
        label = f"fixed k={k}" if n == "fixed" else n
        out[label] = (table[base], "marginal" if suffix == "marginal" else "planner")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--play", default="hamlet")
    ap.add_argument("--offset", type=int, default=20000, help="character offset in the play")
    ap.add_argument("--sources", default="ngram,layer-skip,model-int8")
    ap.add_argument("--policies", default="fixed,dynamic,goodput")
    ap.add_argument("--k", type=int, default=4, help="k of the fixed policy")
    ap.add_argument("--max-draft-len", type=int, default=8)
    ap.add_argument("--skip-layers", type=int, default=8, help="layers kept by layer-skip")
    ap.add_argument("--paired", action="store_true",
                    help="run `off` again just before every configuration and take that "
                         "configuration's ratios against it (less drift on a shared machine)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a second thread on a loaded 2-core machine makes "
                         "multi-token forwards 10-100x slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = find_smollm2_gguf()
    config, state = read_gguf(path)
    model = model_from_state_dict(config, state)
    tok = tokenizer_from_gguf(path)
    prompt = [tok.bos_id, *tok.encode(play_text(args.play)[args.offset:])[: args.prompt_tokens - 1]]
    sources = make_sources(model, config, state, args.sources.split(","), args.skip_layers)
    policies = make_policies(args.policies.split(","), args.k)
    print(f"SmolLM2-135M fp32, CPU, {args.threads} thread(s), batch 1, greedy; prompt: "
          f"{len(prompt)} tokens of {args.play} from character {args.offset}; "
          f"{args.new_tokens} new tokens; max_draft_len {args.max_draft_len}; "
          f"{args.repeats} repeats, medians")

    def run(draft: DraftSource | None, policy: tuple[SpeculationPolicy, Costs]) -> SpecResult:
        return speculative_generate(model, prompt, args.new_tokens, draft, policy=policy[0],
                                    costs=policy[1], max_draft_len=args.max_draft_len)

    off = (NoSpeculation(), "planner")
    run(None, off)  # warm-up (allocator, first-call overheads)
    configs = [("none", "off", None, off)]
    configs += [(s, p, factory, pol) for s, factory in sources.items()
                for p, pol in policies.items()]
    rows: dict[tuple[str, str], list[tuple[SpecResult, float]]] = {
        (s, p): [] for s, p, _, _ in configs}
    reference: list[int] | None = None
    # the `off` run each configuration's ratio is taken against: the repeat's first one, or with
    # --paired an `off` run just before it (the machine's speed drifts over a repeat)
    pair_off: dict[tuple[str, str], list[SpecResult]] = {(s, p): [] for s, p, _, _ in configs}
    for rep in range(args.repeats):
        off_res: SpecResult | None = None
        for s, p, factory, pol in configs:  # interleaved: every repeat sees the same noise
            if args.paired and s != "none":
                off_res = run(None, off)
            t0 = time.perf_counter()
            res = run(factory() if factory else None, pol)
            wall = time.perf_counter() - t0
            if s == "none":
                off_res = res
                reference = reference or res.tokens
            assert off_res is not None
            rows[(s, p)].append((res, wall))
            pair_off[(s, p)].append(off_res)
            st = res.stats
            print(f"  repeat {rep + 1}: {s:14s} {p:10s} acceptance {st.acceptance_rate:.2f} "
                  f"{st.decode_tok_s:6.2f} tok/s "
                  f"({st.decode_tok_s / off_res.stats.decode_tok_s:.2f}x) "
                  f"same output: {res.tokens == reference}", flush=True)

    print()
    print("| draft source | policy | acceptance | tokens / step | mean k | decode tok/s "
          "| speedup vs off | worst repeat | best / best | end-to-end speedup | prefill s "
          "| output == off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    off_runs = rows[("none", "off")]
    ratios: dict[tuple[str, str], list[float]] = {}
    for (s, p), runs in rows.items():
        st = [r.stats for r, _ in runs]
        med = statistics.median
        ratios[(s, p)] = [a.decode_tok_s / b.stats.decode_tok_s
                          for a, b in zip(st, pair_off[(s, p)])]
        speed = med(ratios[(s, p)])
        best = max(x.decode_tok_s for x in st) / max(r.stats.decode_tok_s for r, _ in off_runs)
        e2e = med(w_off / w for (_, w), (_, w_off) in zip(runs, off_runs))
        same = all(r.tokens == reference for r, _ in runs)
        print(f"| {s} | {p} | {med(x.acceptance_rate for x in st):.2f} "
              f"| {med((x.emitted - 1) / x.steps for x in st):.2f} "
              f"| {med(statistics.fmean(x.draft_lens) for x in st):.2f} "
              f"| {med(x.decode_tok_s for x in st):.2f} | {speed:.2f}x "
              f"| {min(ratios[(s, p)]):.2f}x | {best:.2f}x | {e2e:.2f}x "
              f"| {med(x.prefill_s for x in st):.2f} | {'yes' if same else 'NO'} |")

    print()
    print("Decode tok/s over the same repeat's `off`, per repeat:")
    print()
    print("| draft source | policy | " + " | ".join(f"repeat {i + 1}" for i in
                                                    range(args.repeats)) + " | median | worst |")
    print("|---|---|" + "---|" * (args.repeats + 2))
    for (s, p), rs in ratios.items():
        if s != "none":
            print(f"| {s} | {p} | " + " | ".join(f"{r:.2f}x" for r in rs)
                  + f" | {statistics.median(rs):.2f}x | {min(rs):.2f}x |")


if __name__ == "__main__":
    main()
