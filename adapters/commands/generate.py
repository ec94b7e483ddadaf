"""``infer-os generate``: run one prompt through our torch transformer and print the new text.

    infer-os generate --model NAME_OR_PATH (--prompt TEXT | --prompt-ids 1,2,3)
                      [--max-new-tokens N] [--set KEY=VALUE]... [--json]
                      [--device cpu|cuda|auto] [--dtype float32|bfloat16|float16]

Greedy unless ``--set temperature=...``.  ``--json`` prints one object on stdout:
``{"token_ids", "text", "prompt_tokens", "prefill_s", "decode_tok_s", "device", "dtype", "model",
"finish_reason"}``; everything else goes to stderr.  With ``--prompt-ids`` a model without a
tokenizer (no tokenizer.json, no ``tokenizer.ggml.*`` metadata) works too: ids in, ids out
(``text`` is null; the plain output is the new ids, comma-separated).

Bounds, checked before the model is loaded (exit 2 naming the flag): ``--max-new-tokens`` 0 to
1048576; ``--prompt-ids`` 1 to 1048576 ids, each 0 to 2147483647 (and below the model's
vocabulary, checked once it is loaded, as is prompt + new tokens <= the model's positions);
``--set temperature`` 0 (greedy) or 0.001 to 100, ``top_k`` 0 to 2147483647, ``seed`` 0 to
2**63 - 1.  Ctrl-C and SIGTERM end the command with status 130 / 143 and one line (the CLI's
``main``).  This module imports torch only when the command runs, so that registering it costs
other commands nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from adapters.calibration.checks import bounded
from sim.errors import BackendUnavailable, UserError

DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS = 1 << 20
MAX_PROMPT_IDS = 1 << 20
MAX_TOKEN_ID = 2**31 - 1
MAX_SEED = 2**63 - 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _temperature(text: str) -> float:
    value = float(text)
    if value != 0 and not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:  # also rejects nan
        raise ValueError(f"must be 0 (greedy) or from {MIN_TEMPERATURE:g} to "
                         f"{MAX_TEMPERATURE:g}")
    return value


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value
    return parse


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("must be true or false")


# ``--set`` keys: name -> (parser, help).  Speculative decoding adds its keys here (draft length,
# drafter, acceptance threshold) and ``run`` hands them to the speculative decoder instead of
# ``adapters.decoding.greedy.generate``.
SET_KEYS: dict[str, tuple[Any, str]] = {
    "temperature": (_temperature, "0 = greedy (default); 0.001 to 100 samples"),
    "top_k": (_int_in(0, MAX_TOKEN_ID),
              "sample from the k most likely tokens; 0 = all (default)"),
    "seed": (_int_in(0, MAX_SEED), "seed of the sampling generator (default: torch's global one)"),
    "ignore_eos": (_bool, "keep going past the end-of-sequence token (default false)"),
}


@dataclass(frozen=True, slots=True)
class Options:
    """The ``--set`` values, parsed."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False


def parse_sets(items: list[str]) -> Options:
    """``["temperature=0.7", "seed=1"]`` -> ``Options``; a ``UserError`` naming the key if bad."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"expected KEY=VALUE, got {item!r}", field="--set")
        if key not in SET_KEYS:
            raise UserError(f"unknown key {key!r} (known: {', '.join(SET_KEYS)})", field="--set")
        try:
            values[key] = SET_KEYS[key][0](text.strip())
        except ValueError as err:
            raise UserError(f"bad value {text!r} ({err})", field=f"--set {key}") from None
    return Options(**values)


def parse_prompt_ids(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``, at most ``MAX_PROMPT_IDS`` ids of 0 to ``MAX_TOKEN_ID``."""
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"expected comma-separated token ids, got {text[:40]!r}",
                        field="--prompt-ids") from None
    if not ids:
        raise UserError("expected one or more token ids", field="--prompt-ids")
    if len(ids) > MAX_PROMPT_IDS:
        raise UserError(f"{len(ids)} ids, more than {MAX_PROMPT_IDS}", field="--prompt-ids")
    if not 0 <= min(ids) <= max(ids) <= MAX_TOKEN_ID:
        bad = min(ids) if min(ids) < 0 else max(ids)
        raise UserError(f"token id {bad} is not from 0 to {MAX_TOKEN_ID}", field="--prompt-ids")
    return ids


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``generate`` on the CLI's subparsers; its handler is ``run``."""
    p = subparsers.add_parser("generate", help="generate text from a prompt with our torch model")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="smollm2-135m, a .gguf file or a local Hugging Face directory")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (no BOS is added)")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                   help=f"0 to {MAX_NEW_TOKENS} (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="; ".join(f"{k}: {h}" for k, (_, h) in SET_KEYS.items()))
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    # the CLI's main turns SIGTERM into exit 143 with one line for commands that ask for it
    p.set_defaults(func=run, stop_on_sigterm=True)
    return p


def _info(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, print.  Bad input is a ``UserError`` (exit 2), a missing GPU a
    ``BackendUnavailable`` (exit 3); both are raised before any weights are read if possible."""
    options = parse_sets(args.set or [])
    max_new = bounded(args.max_new_tokens, "--max-new-tokens", 0, MAX_NEW_TOKENS)
    if args.prompt is not None and not args.prompt:
        raise UserError("empty prompt", field="--prompt")
    prompt_ids = parse_prompt_ids(args.prompt_ids) if args.prompt_ids is not None else None

    try:
        from adapters.decoding.greedy import Sampling, generate
        from adapters.model.loading import (
            describe_device,
            load_model,
            resolve_device,
            resolve_dtype,
        )
    except ImportError as err:  # installed without the torch extra
        raise BackendUnavailable(f"generate needs the Python package {err.name or err}, which is "
                                 "not installed here (pip install 'infer-os[torch]')") from None

    device = resolve_device(args.device)  # a missing GPU fails before loading
    dtype = resolve_dtype(args.dtype)
    _info(f"loading {args.model} ({args.dtype}, {describe_device(device)})")
    loaded = load_model(args.model, dtype=dtype, device=args.device,
                        require_tokenizer=prompt_ids is None)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.model.cfg
    if prompt_ids is None:
        prompt_ids = tok.encode(args.prompt)  # refuses ids the model has no embedding for
        if not prompt_ids:
            raise UserError("the tokenizer turns the prompt into no tokens", field="--prompt")
    elif max(prompt_ids) >= cfg.vocab:
        raise UserError(f"token id {max(prompt_ids)} is outside the vocabulary (size {cfg.vocab})",
                        field="--prompt-ids")
    limit = min(x for x in (cfg.max_positions, cfg.sliding_window) if x is not None)
    if len(prompt_ids) + max_new > limit:
        raise UserError(f"{len(prompt_ids)} prompt + {max_new} new tokens exceed the "
                        f"model's {limit} positions", field="--max-new-tokens")
    sampling = Sampling(options.temperature, options.top_k, options.seed, options.ignore_eos)
    eos_id = tok.eos_id if tok is not None else _config_eos(loaded.config, cfg.vocab)
    out = generate(model, prompt_ids, max_new, sampling, eos_id)
    new = out.token_ids[:-1] if out.finish_reason == "eos" else out.token_ids
    doc = {"token_ids": out.token_ids, "text": tok.decode(new) if tok is not None else None,
           "prompt_tokens": out.prompt_tokens, "prefill_s": out.prefill_s,
           "decode_tok_s": out.decode_tok_s, "device": describe_device(device),
           "dtype": args.dtype, "model": args.model, "finish_reason": out.finish_reason}
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    text = doc["text"] if tok is not None else ",".join(map(str, out.token_ids))
    sys.stdout.write(text + "\n")
    _info(f"[{len(out.token_ids)} new tokens ({out.finish_reason}) after {out.prompt_tokens} "
          f"prompt tokens; prefill {out.prefill_s * 1e3:.0f} ms, decode "
          f"{out.decode_tok_s:.1f} tok/s; {doc['device']}, {args.dtype}]")
    return 0


def _config_eos(config: dict[str, Any], vocab: int) -> int | None:
    """The end-of-sequence id a model without a tokenizer declares in its config, if any."""
    eos = config.get("eos_token_id")
    ok = isinstance(eos, int) and not isinstance(eos, bool) and 0 <= eos < vocab
    return eos if ok else None
