"""Speculative decoding on our torch transformer: acceptance rules, the statistics a speculation
policy observes, and a batch-1 generation loop.

One step: a draft source (``adapters.decoding.drafting``) guesses k tokens; the target runs the
last emitted token and the k guesses in one forward pass (k + 1 positions); the acceptance rule
keeps a prefix of the guesses and adds one token of the target's own.  So a step emits 1..k+1
tokens.

- Temperature 0 (``accept_greedy``): keep the longest prefix where guess == the target's argmax,
  then emit the target's argmax at the first mismatch (or the bonus token after all k).  The output
  is exactly plain greedy decoding's (up to float rounding between a k+1-token and a 1-token
  forward, which never flips an argmax in our tests).
- Temperature > 0 (``accept_sampled``): rejection sampling (Leviathan et al. 2023, Chen et al.
  2023): keep guess x with probability min(1, p(x) / q(x)); at the first rejection emit a sample of
  norm(max(p - q, 0)); after k acceptances a sample of p.  Every emitted token is distributed as
  the target's p.  A point-mass draft (n-gram, q = one-hot(x)) keeps x with probability p(x) and
  otherwise samples p with x removed.

Rollback: the contiguous cache overwrites a position written again, and attention reads only
positions 0..max(new positions), so rejected guesses are rolled back by continuing at the
position after the last kept token.  The draft source is told how many tokens survived.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Literal

import numpy as np
import torch

from adapters.decoding.drafting import DraftSource, draw
from adapters.kv.cache import ContiguousKVCache
from adapters.model.transformer import Transformer
from policies.speculation import (
    FixedSpeculation,
    SpecObservation,
    SpeculationPolicy,
)
from sim.engine.spec_signals import SpecSignals, ewma
from sim.errors import InfeasibleDecision


# -- acceptance -----------------------------------------------------------------------------------
def accept_greedy(target_logits: torch.Tensor, draft_ids: list[int]) -> tuple[int, int]:
    """target_logits [k+1, V] (row i predicts the token after guess i; row 0 the one after the
    last emitted token) -> (guesses kept m, the target's token at position m)."""
    best = target_logits.argmax(dim=-1).tolist()  # [k+1]
    m = 0
    while m < len(draft_ids) and draft_ids[m] == best[m]:
        m += 1
    return m, best[m]


def accept_sampled(target_logits: torch.Tensor, draft_ids: list[int],
                   draft_probs: torch.Tensor | None, temperature: float,
                   generator: torch.Generator | None) -> tuple[int, int]:
    """Rejection sampling.  target_logits [k+1, V]; draft_probs [k, V] the distributions q the
    guesses were drawn from (``None``: point masses) -> (guesses kept m, the next token).
    Uses k uniforms and one categorical draw from ``generator`` per call."""
    k = len(draft_ids)
    p = torch.softmax(target_logits.float() / temperature, dim=-1)  # [k+1, V]
    if k:
        rows = torch.arange(k, device=p.device)
        ids = torch.tensor(draft_ids, device=p.device)
        px = p[rows, ids]  # [k]
        qx = torch.ones_like(px) if draft_probs is None else draft_probs[rows, ids].to(px)
        u = torch.rand(k, generator=generator, device=p.device)
        keep = (u * qx < px).tolist()  # u < p/q without dividing by a zero q
        m = keep.index(False) if False in keep else k
    else:
        m = 0
    if m == k:
        dist = p[k]
    else:
        if draft_probs is None:
            dist = p[m].clone()
            dist[draft_ids[m]] = 0.0
        else:
            dist = (p[m] - draft_probs[m].to(p)).clamp_(min=0.0)
        if not float(dist.sum()) > 0:  # p == q up to rounding: a rejection was a 0-prob event
            dist = p[m]
    return m, int(torch.multinomial(dist, 1, generator=generator))


def accept(target_logits: torch.Tensor, draft_ids: list[int], draft_probs: torch.Tensor | None,
           temperature: float, generator: torch.Generator | None) -> tuple[int, int]:
    """``accept_greedy`` at temperature 0, else ``accept_sampled``."""
    if temperature <= 0:
        return accept_greedy(target_logits, draft_ids)
    return accept_sampled(target_logits, draft_ids, draft_probs, temperature, generator)


# -- what the policy observes ---------------------------------------------------------------------
def _signal(name: str, doc: str) -> property:
    """``SpecTracker.<name>``: ``SpecSignals.<name>`` of its signals, read-only."""
    return property(attrgetter(f"signals.{name}"), doc=doc)


@dataclass
class SpecTracker:
    """The statistics a speculation policy sees, kept in the planner's own ``SpecSignals``
    (``sim.engine.spec_signals``), so exactly as ``sim.engine.planner.Planner`` keeps them:
    acceptance EWMA (weight ``EWMA_WEIGHT``, the first sample taken as is) and the last
    ``HISTORY_LEN`` per-step acceptances, each accepted / (accepted + rejections) (at most one
    rejection per sequence and step); step-cost EWMAs: verify = step time minus draft time,
    every step (``verify_s``) and plain (k = 0) steps only (``plain_verify_s``, the observation's
    ``verify_s`` once measured); draft cost per proposed token (``draft_token_s``) and, once a
    plain step has been measured, the verify time of a drafting step beyond ``plain_verify_s``
    per proposed token (``verify_token_s``: the verify pass's growth with k, ~44 ms per token for
    SmolLM2-135M on one CPU thread) and per number of guesses (``verify_extra_s``).  Seconds.

    "k used" is the number of guesses actually proposed, which can be below the decided k (an
    n-gram source that finds nothing, a confidence threshold, the end of the output).

    ``costs="marginal"``: for policies that ignore ``verify_token_s``, the same extra verify time
    folded into the draft cost instead: ``draft_token_s`` = EWMA of (draft seconds + verify seconds
    - plain-step EWMA) / k and ``verify_token_s`` reported as 0, ``verify_extra_s`` empty (the
    step cost the policies model, k * draft_token_s + verify_s, is the same).  Until a plain step
    has been measured it behaves as ``"planner"``."""

    costs: Literal["planner", "marginal"] = "planner"
    signals: SpecSignals = field(default_factory=SpecSignals)

    acceptance = _signal("acceptance", "EWMA of the per-step acceptance")
    history = _signal("history", "the last ``HISTORY_LEN`` per-step acceptances")
    last_k = _signal("last_k", "guesses proposed in the last step")
    last_all_accepted = _signal("last_all_accepted", "the last step kept every guess")
    steps_since_draft = _signal("steps_since_draft", "steps since the last one that drafted")
    draft_token_s = _signal("draft_token_s", "EWMA of draft seconds per guess")
    verify_s = _signal("verify_s", "EWMA of every step's verify seconds")
    plain_verify_s = _signal("plain_verify_s", "EWMA of plain steps' verify seconds")
    verify_token_s = _signal("verify_token_s",
                             "EWMA of drafting steps' extra verify seconds per guess")

    def observation(self, max_draft_len: int, batch_size: int = 1) -> SpecObservation:
        obs = self.signals.observation(max_draft_len, batch_size)
        if self.costs == "marginal":
            return replace(obs, verify_token_s=0.0, verify_extra_s=())
        return obs

    def record(self, k: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """One decode step of one sequence: ``k`` guesses proposed, ``accepted`` kept."""
        s = self.signals
        s.decided(k)
        if k:
            s.record_acceptance(np.array([k]), np.array([accepted]))
        draft_token_s, plain_verify_s = s.draft_token_s, s.plain_verify_s
        s.record_costs(draft_s, verify_s, k)
        if self.costs == "marginal" and k and plain_verify_s > 0:
            extra = max(verify_s - plain_verify_s, 0.0) / k  # the guesses' extra verify time
            s.draft_token_s = ewma(draft_token_s, draft_s / k + extra)


# -- measured counts ------------------------------------------------------------------------------
@dataclass
class SpecStats:
    """Measured counts of one generation.  Seconds are wall-clock (``time.perf_counter``) after a
    device synchronisation; ``verify_s`` includes the acceptance rule; ``prefill_s`` includes the
    draft source's own prefill."""

    proposed: int = 0  # guesses proposed
    accepted: int = 0  # guesses kept
    steps: int = 0  # target forward passes after the prefill (plain or verifying)
    drafting_steps: int = 0  # of which proposed at least one guess
    emitted: int = 0  # new tokens returned (the prefill's first token included)
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    draft_lens: list[int] = field(default_factory=list)  # guesses proposed, per step

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def decode_s(self) -> float:
        return self.draft_s + self.verify_s

    @property
    def decode_tok_s(self) -> float:
        """Tokens emitted after the first, per second of decoding (drafting + verifying)."""
        return (self.emitted - 1) / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class SpecResult:
    tokens: list[int]  # the new tokens only (at most max_new_tokens)
    stats: SpecStats


# -- the loop -------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_list(prompt_ids: torch.Tensor | list[int]) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2:
            if prompt_ids.shape[0] != 1:
                raise ValueError("speculative_generate runs batch 1")
            prompt_ids = prompt_ids[0]
        return [int(t) for t in prompt_ids.tolist()]
    return [int(t) for t in prompt_ids]


@torch.inference_mode()
def speculative_generate(
    model: Transformer, prompt_ids: torch.Tensor | list[int], max_new_tokens: int,
    draft: DraftSource | None = None, *, policy: SpeculationPolicy | int | None = None,
    max_draft_len: int = 8, temperature: float = 0.0, seed: int = 0,
    eos_id: int | None = None, cache: ContiguousKVCache | None = None,
    use_threshold: bool = True, rid: int = 0, costs: Literal["planner", "marginal"] = "planner",
) -> SpecResult:
    """Generate up to ``max_new_tokens`` tokens after ``prompt_ids`` ([T], [1, T] or a list),
    speculating with ``draft``.

    ``policy``: a speculation policy (``policies.speculation*``) asked for k before every step with
    a ``SpecObservation`` built as ``sim.engine.planner`` builds it (``SpecTracker``); an int =
    fixed k; ``None`` = fixed k = ``max_draft_len``.  A decided k outside [0, max_draft_len] raises
    ``InfeasibleDecision``.  The k used is also cut so that a step never emits more tokens than are
    still wanted and never writes past the cache.  With ``use_threshold`` a model draft stops early
    below the policy's confidence threshold.  Temperature 0: greedy, identical to
    ``generate_greedy``; otherwise sampling from softmax(logits / temperature) with a
    ``torch.Generator`` seeded with ``seed`` (deterministic).  Stops after ``eos_id`` if given.
    ``cache`` (default: a new one of P + max_new_tokens positions) must hold
    P + max_new_tokens - 1 positions.  ``costs``: how step times become the policy's cost
    observations (``SpecTracker``); with ``"marginal"`` the first decode step is a plain one, to
    measure the plain step's cost."""
    prompt = _as_list(prompt_ids)
    P = len(prompt)
    if P == 0:
        raise ValueError("empty prompt")
    if isinstance(policy, int) or policy is None:
        policy = FixedSpeculation(k=max_draft_len if policy is None else policy)
    dev = model.tok_embeddings.weight.device
    if cache is None:
        cache = model.new_cache(1, P + max_new_tokens)
    if max_new_tokens > 0 and cache.max_tokens < P + max_new_tokens - 1:
        raise ValueError(f"cache holds {cache.max_tokens} positions, "
                         f"{P + max_new_tokens - 1} needed")
    gen = torch.Generator(device=dev).manual_seed(seed)
    stats, tracker = SpecStats(), SpecTracker(costs=costs)
    out: list[int] = []
    if max_new_tokens <= 0:
        return SpecResult(out, stats)

    _sync(dev)
    t0 = time.perf_counter()
    logits = model(torch.tensor([prompt], device=dev), cache, torch.arange(P, device=dev))[0, -1]
    if draft is not None:
        draft.prefill(rid, prompt)
    out.append(draw(logits, temperature, gen)[0])
    _sync(dev)
    stats.prefill_s = time.perf_counter() - t0
    tokens = prompt + out

    while len(out) < max_new_tokens and not (eos_id is not None and out[-1] == eos_id):
        n = len(tokens)  # tokens[-1] is not in the cache yet: it is fed at position n - 1
        decision = policy.decide(tracker.observation(max_draft_len))
        k = decision.draft_len
        if not 0 <= k <= max_draft_len:
            raise InfeasibleDecision(f"speculation policy {policy.kind!r}: draft length {k} "
                                     f"outside [0, {max_draft_len}]")
        if k and draft is None:
            raise InfeasibleDecision(f"speculation policy {policy.kind!r} drafts tokens but no "
                                     "draft source was given")
        k = min(k, max_new_tokens - len(out) - 1, cache.max_tokens - n)
        if costs == "marginal" and stats.steps == 0:
            k = 0

        t0 = t1 = time.perf_counter()
        guesses: list[int] = []
        q = None
        if k > 0 and draft is not None:
            guesses, q = draft.propose(
                rid, tokens, k, temperature=temperature, generator=gen,
                threshold=decision.threshold if use_threshold else 0.0)
            guesses = guesses[:k]
            q = None if q is None else q[:len(guesses)]
            _sync(dev)
            t1 = time.perf_counter()
        ids = torch.tensor([[tokens[-1], *guesses]], device=dev)
        positions = torch.arange(n - 1, n + len(guesses), device=dev)
        target_logits = model(ids, cache, positions)[0]  # [len(guesses) + 1, V]
        m, nxt = accept(target_logits, guesses, q, temperature, gen)
        _sync(dev)
        t2 = time.perf_counter()

        if draft is not None and guesses:
            draft.rollback(rid, n + m)
        tracker.record(len(guesses), m, t1 - t0, t2 - t1)
        stats.steps += 1
        stats.drafting_steps += bool(guesses)
        stats.proposed += len(guesses)
        stats.accepted += m
        stats.draft_s += t1 - t0
        stats.verify_s += t2 - t1
        stats.draft_lens.append(len(guesses))

        emitted = [*guesses[:m], nxt][: max_new_tokens - len(out)]
        if eos_id is not None and eos_id in emitted:
            emitted = emitted[: emitted.index(eos_id) + 1]
        out.extend(emitted)
        tokens.extend(emitted)

    if draft is not None:
        draft.forget(rid)
    stats.emitted = len(out)
    return SpecResult(out, stats)
