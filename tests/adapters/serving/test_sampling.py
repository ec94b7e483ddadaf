"""The server's sampler: greedy acceptance as ``measure``'s, and rejection sampling of drafts that
leaves every emitted token distributed as the target's own p (the point of speculative sampling),
checked empirically on a fixed distribution with seeded generators."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.serving.sampling import Sampler, Sampling  # noqa: E402

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])  # the target's distribution at every position
LOGITS = torch.log(P).repeat(3, 1)  # [T=3, V=5]: a fed token and two draft positions


def test_greedy_accepts_while_drafts_equal_the_argmax():
    s = Sampler(torch.device("cpu"))
    s.set(0, Sampling(temperature=0.0))
    assert s.accept(0, [0, 0], LOGITS) == (2, 0)
    assert s.accept(0, [0, 3], LOGITS) == (1, 0)
    assert s.accept(0, [], LOGITS) == (0, 0)


@pytest.mark.parametrize("draft", [0, 3])  # a likely and an unlikely proposal
def test_rejection_sampling_keeps_the_target_distribution(draft):
    """The first emitted token, over 20,000 seeded requests, is distributed as P whatever the
    draft proposed; acceptance happens at rate P[draft]."""
    s = Sampler(torch.device("cpu"))
    counts, accepted = torch.zeros(5), 0
    n = 20_000
    for i in range(n):
        s.set(i, Sampling(temperature=1.0, seed=i))
        a, nxt = s.accept(i, [draft, 1], LOGITS)
        counts[draft if a >= 1 else nxt] += 1
        accepted += a >= 1
        s.forget(i)
    freq = counts / n
    assert torch.allclose(freq, P, atol=0.015), freq
    assert abs(accepted / n - float(P[draft])) < 0.015


def test_top_k_and_top_p_restrict_the_support():
    s = Sampler(torch.device("cpu"))
    s.set(0, Sampling(temperature=1.0, top_k=2, seed=1))
    assert {s.first(0, LOGITS[0]) for _ in range(300)} == {0, 1}
    s.set(1, Sampling(temperature=1.0, top_p=0.6, seed=1))  # 0.5 + 0.2 reaches 0.6
    assert {s.first(1, LOGITS[0]) for _ in range(300)} == {0, 1}
