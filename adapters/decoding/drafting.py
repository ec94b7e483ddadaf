"""Draft sources for speculative decoding: where the k guessed tokens of a step come from.

Every source serves many sequences, each keyed by a request id (``rid``), so that a batched
executor can call it row by row.  The interface (``DraftSource``):

- ``propose(rid, tokens, k, *, temperature=0.0, generator=None, threshold=0.0)`` ->
  ``(draft_ids, draft_probs)``.  ``tokens`` is the whole sequence so far (prompt + emitted
  tokens).  ``draft_ids`` holds at most ``k`` guesses of the next tokens; ``draft_probs``
  [len(draft_ids), V] (float32, rows sum to 1) is the distribution q each guess was drawn from
  (at ``temperature``; at temperature 0 the guess is q's argmax and q is the softmax at 1), or
  ``None`` for a point mass (the guess had probability 1).  With ``threshold`` > 0 a model
  source stops early once the probability of its own guess falls below it (Hugging Face's
  ``assistant_confidence_threshold``); the first guess is always kept.
- ``prefill(rid, tokens)``: optional warm-up with the prompt, run with the target's prefill so
  that the first ``propose`` does not pay for it (model sources fill their cache; others do
  nothing).
- ``rollback(rid, num_tokens)``: only ``tokens[:num_tokens]`` of the last proposal's sequence
  (including its drafts) survived verification; forget the rest.  Sources also compare each new
  ``tokens`` with what they hold, so a missed rollback costs recomputation, never a wrong guess.
- ``forget(rid)``: the request is finished; free its state.

Sources: ``ModelDraft`` (a separate, smaller transformer with its own per-request K/V cache, fed
incrementally), ``LayerSkipDraft`` (the target's first n layers, final norm and head; self-drafting
as in LayerSkip, Elhoushi et al. 2024) and ``NgramDraft`` (prompt lookup decoding, Saxena 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from adapters.kv.cache import ContiguousKVCache
from adapters.model.transformer import Transformer

Proposal = tuple[list[int], torch.Tensor | None]


class DraftSource(Protocol):
    """See the module docstring for the contract of each method."""

    name: str

    def propose(self, rid: int, tokens: list[int], k: int, *, temperature: float = 0.0,
                generator: torch.Generator | None = None,
                threshold: float = 0.0) -> Proposal: ...

    def prefill(self, rid: int, tokens: list[int]) -> None: ...

    def rollback(self, rid: int, num_tokens: int) -> None: ...

    def forget(self, rid: int) -> None: ...


def draw(logits: torch.Tensor, temperature: float,
         generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """logits [V] -> (token, q [V] float32).  Temperature 0: argmax, q = softmax(logits);
    otherwise a sample from q = softmax(logits / temperature) drawn with ``generator``."""
    if temperature <= 0:
        q = torch.softmax(logits.float(), dim=-1)
        return int(torch.argmax(logits)), q
    q = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(q, 1, generator=generator)), q


# -- model drafts ---------------------------------------------------------------------------------
@dataclass
class _SeqState:
    """One request's draft cache: K/V of ``seen[:len(seen)]`` at positions 0..len(seen)-1."""

    cache: ContiguousKVCache
    seen: list[int] = field(default_factory=list)


class _CachedModelDraft:
    """A transformer (or part of one) that drafts autoregressively over its own K/V cache.

    Each ``propose`` feeds only what the cache lacks: the tokens after the longest common prefix
    of ``tokens`` and what it holds (typically the target's correction, or the last accepted draft
    and the bonus token), then one token per further draft.  k drafts cost k forward passes (the
    last guess is never fed back), the first over 1-2 tokens in the steady state.
    """

    name = "model"

    def __init__(self, model: Transformer, num_layers: int, initial_tokens: int = 1024):
        self.model, self.num_layers = model, num_layers
        self.initial_tokens = initial_tokens
        self._seqs: dict[int, _SeqState] = {}
        cfg = model.cfg
        self.max_positions = cfg.sliding_window if cfg.arch == "llama" and cfg.sliding_window \
            else (cfg.max_positions if cfg.arch == "gpt2" else None)

    def _new_cache(self, max_tokens: int) -> ContiguousKVCache:
        w = self.model.tok_embeddings.weight
        cfg = self.model.cfg
        return ContiguousKVCache.empty(
            num_layers=self.num_layers, batch=1, num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim, max_tokens=max_tokens, dtype=w.dtype, device=w.device)

    def _state(self, rid: int, needed: int) -> _SeqState:
        """The request's state with room for ``needed`` positions (grown by doubling, copied)."""
        st = self._seqs.get(rid)
        if st is None:
            st = self._seqs[rid] = _SeqState(self._new_cache(max(self.initial_tokens, needed)))
        elif st.cache.max_tokens < needed:
            bigger = self._new_cache(max(2 * st.cache.max_tokens, needed))
            n = len(st.seen)
            bigger.k[..., :n, :] = st.cache.k[..., :n, :]
            bigger.v[..., :n, :] = st.cache.v[..., :n, :]
            st.cache = bigger
        return st

    def _logits(self, ids: list[int], start: int, cache: ContiguousKVCache) -> torch.Tensor:
        """Feed ``ids`` at positions start.. -> the last position's logits [V]."""
        dev = self.model.tok_embeddings.weight.device
        x = torch.tensor([ids], device=dev)
        pos = torch.arange(start, start + len(ids), device=dev)
        # the head on the last position only: a catch-up or prefill pass feeds many tokens
        hidden = self.model.hidden_states(x, cache, pos, num_layers=self.num_layers)[:, -1:]
        return self.model.output(self.model.norm(hidden))[0, -1]

    @torch.inference_mode()
    def prefill(self, rid: int, tokens: list[int]) -> None:
        """Fill this request's cache with ``tokens[:-1]`` (the last is fed by ``propose``)."""
        if len(tokens) > 1:
            st = self._state(rid, len(tokens))
            self._logits(tokens[:-1], 0, st.cache)
            st.seen = list(tokens[:-1])

    @torch.inference_mode()
    def propose(self, rid: int, tokens: list[int], k: int, *, temperature: float = 0.0,
                generator: torch.Generator | None = None, threshold: float = 0.0) -> Proposal:
        n = len(tokens)
        if self.max_positions is not None:
            k = min(k, self.max_positions - n)
        if k <= 0 or n == 0:
            return [], None
        st = self._state(rid, n + k)
        common = 0
        for a, b in zip(st.seen, tokens):
            if a != b:
                break
            common += 1
        common = min(common, n - 1)  # the last token is always fed: we need its logits
        logits = self._logits(tokens[common:], common, st.cache)
        st.seen = list(tokens)
        drafts: list[int] = []
        probs: list[torch.Tensor] = []
        while True:
            tok, q = draw(logits, temperature, generator)
            if drafts and threshold > 0 and float(q[tok]) < threshold:
                break
            drafts.append(tok)
            probs.append(q)
            if len(drafts) == k:
                break
            logits = self._logits([tok], n + len(drafts) - 1, st.cache)
            st.seen.append(tok)
        return drafts, torch.stack(probs)

    def rollback(self, rid: int, num_tokens: int) -> None:
        st = self._seqs.get(rid)
        if st is not None:
            del st.seen[num_tokens:]

    def forget(self, rid: int) -> None:
        self._seqs.pop(rid, None)


class ModelDraft(_CachedModelDraft):
    """A separate draft transformer (same vocabulary as the target), with its own K/V cache per
    request."""

    name = "model"

    def __init__(self, draft_model: Transformer, initial_tokens: int = 1024):
        super().__init__(draft_model, draft_model.cfg.num_layers, initial_tokens)


class LayerSkipDraft(_CachedModelDraft):
    """Self-drafting: the target's first ``num_layers`` blocks, then its final norm and LM head
    (``Transformer.forward(num_layers=n)``), with its own cache of those n layers' K/V."""

    name = "layer-skip"

    def __init__(self, model: Transformer, num_layers: int, initial_tokens: int = 1024):
        if not 1 <= num_layers <= model.cfg.num_layers:
            raise ValueError(f"num_layers must be in [1, {model.cfg.num_layers}], "
                             f"got {num_layers}")
        super().__init__(model, num_layers, initial_tokens)


# -- prompt lookup --------------------------------------------------------------------------------
@dataclass
class NgramDraft:
    """Prompt lookup decoding (Saxena 2023; HF ``prompt_lookup_num_tokens``): for n from
    ``max_ngram`` down to ``min_ngram``, find the most recent earlier occurrence of the sequence's
    last n tokens and propose the (up to k) tokens that followed it.  Proposes nothing when no
    n-gram recurs.  Point-mass drafts: ``draft_probs`` is ``None``.  Stateless per request
    (``rollback`` and ``forget`` do nothing); a lookup costs O(len(tokens) * max_ngram) in Python,
    about a millisecond for a thousand tokens."""

    max_ngram: int = 3
    min_ngram: int = 1
    name: str = "ngram"
    scanned: int = field(default=0, compare=False)  # by the last ``propose``
    compared: int = field(default=0, compare=False)  # of them, those whose first token matched

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")

    def propose(self, rid: int, tokens: list[int], k: int, *, temperature: float = 0.0,
                generator: torch.Generator | None = None, threshold: float = 0.0) -> Proposal:
        n = len(tokens)
        # what the lookup's time grows with (the shadow prices it): the candidate starts it
        # examined, and the slices it compared (a start whose first token matched)
        self.scanned = self.compared = 0
        if k <= 0:
            return [], None
        for size in range(min(self.max_ngram, n - 1), self.min_ngram - 1, -1):
            suffix = tokens[n - size:]
            first = suffix[0]
            # candidate starts i < n - size, most recent first
            for i in range(n - size - 1, -1, -1):
                if tokens[i] == first:
                    self.compared += 1
                    if tokens[i:i + size] == suffix:
                        follow = tokens[i + size:i + size + k]
                        if follow:
                            self.scanned += n - size - i
                            return list(follow), None
            self.scanned += n - size
        return [], None

    def prefill(self, rid: int, tokens: list[int]) -> None:
        return None

    def rollback(self, rid: int, num_tokens: int) -> None:
        return None

    def forget(self, rid: int) -> None:
        return None
