"""What the torch (and ONNX Runtime) executor takes from a scenario besides its model: each
request's prompt token ids (a seeded slice of Shakespeare, or random ids) and the draft source its
speculation policy names."""

from __future__ import annotations

from pathlib import Path

from adapters.model.transformer import Transformer
from sim.config.scenario import Scenario
from sim.config.seeds import random_stream
from sim.engine.workload import Requests
from sim.errors import BackendUnavailable, UserError


def make_prompts(scn: Scenario, requests: Requests, tokenizer, vocab: int) -> list[list[int]]:
    """Each request's prompt token ids, exactly ``prompt_tokens[i]`` long and seeded: a slice of
    Shakespeare at a seeded offset, or random ids."""
    rng = random_stream(scn.seed, "prompt_tokens")
    lengths = requests.prompt_tokens.tolist()
    if scn.workload.prompt_text == "random" or tokenizer is None:
        if scn.workload.prompt_text != "random":
            raise UserError("the model has no tokenizer: use workload.prompt_text: random",
                            field="workload.prompt_text")
        return [rng.integers(0, vocab, n).tolist() for n in lengths]
    corpus = _corpus(tokenizer, 4 * max(lengths) + 100_000)
    if len(corpus) <= max(lengths):
        raise BackendUnavailable(f"not enough text for a {max(lengths)}-token prompt")
    starts = rng.integers(0, len(corpus) - max(lengths), len(lengths))
    return [corpus[s:s + n] for s, n in zip(starts.tolist(), lengths)]


_CORPORA: dict[int, list[int]] = {}


def _corpus(tokenizer, min_tokens: int) -> list[int]:
    """Shakespeare's plays, in name order, tokenized until ``min_tokens`` (cached per tokenizer)."""
    from adapters.model.text import play_names, play_text

    corpus = _CORPORA.setdefault(id(tokenizer), [])
    if len(corpus) < min_tokens:
        corpus.clear()
        for play in play_names():
            corpus.extend(tokenizer.encode(play_text(play)))
            if len(corpus) >= min_tokens:
                break
    return corpus


def make_drafter(scn: Scenario, model: Transformer, base_dir: Path, dtype: str, device: str):
    """The draft source the scenario names, when its speculation policy can draft."""
    if scn.policies.speculation.kind == "off":
        return None
    from adapters.decoding import drafting
    from adapters.model.loading import load_shared, resolve_spec

    setup = scn.speculation
    if setup.draft_source == "ngram":
        return drafting.NgramDraft(max_ngram=setup.ngram)
    if setup.draft_source == "layer-skip":
        return drafting.LayerSkipDraft(model, setup.draft_layers)
    spec = resolve_spec(scn.model.draft, base_dir) if scn.model.draft else scn.model.draft
    draft, _ = load_shared(spec, "random", dtype, device)
    return drafting.ModelDraft(draft)
