"""Per-request token choice for a server: greedy, or sampled with temperature / top-p / top-k;
draft tokens accepted by rejection sampling.

The executor calls ``first(rid, logits[V])`` after a prefill and ``accept(rid, drafts,
logits[T, V])`` after a decode or verify pass (``adapters.torch_backend.executor``).

Greedy (temperature 0): the argmax, and a draft token is accepted while it equals the argmax
(exactly ``measure``'s rule).  Sampled: our draft sources (n-gram lookup, a layer-skip or draft
model decoded greedily) propose deterministically, so the draft distribution q is a point mass on
the proposed token x.  Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) accepts x
with probability min(1, p(x) / q(x)) = p(x); on a rejection it samples from the residual
max(0, p - q), normalised, which is p with x removed.  Every output token is then distributed as
the target's own p: speculation changes the speed, never the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int | None = None


class Sampler:
    """The sampling settings of each request slot, and each slot's random generator."""

    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self.params: dict[int, Sampling] = {}
        self.generators: dict[int, torch.Generator] = {}
        self._serial = torch.Generator(device="cpu").manual_seed(seed)  # seeds of unseeded ones

    def set(self, rid: int, params: Sampling) -> None:
        self.params[rid] = params
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int(
                torch.randint(0, 2**62, (1,), generator=self._serial))
            self.generators[rid] = torch.Generator(device="cpu").manual_seed(seed)
        else:
            self.generators.pop(rid, None)

    def forget(self, rid: int) -> None:
        self.params.pop(rid, None)
        self.generators.pop(rid, None)

    def _probs(self, p: Sampling, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of ``logits`` [..., V] at the temperature, restricted to top-k / top-p."""
        x = logits.float().cpu() / p.temperature
        if p.top_k and p.top_k < x.shape[-1]:
            kth = torch.topk(x, p.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            cut = torch.cumsum(sorted_p, dim=-1) - sorted_p >= p.top_p  # keep the first over
            sorted_p = sorted_p.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def _draw(self, rid: int, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generators[rid]))

    def first(self, rid: int, logits: torch.Tensor) -> int:
        p = self.params.get(rid)
        if p is None or p.temperature == 0:
            return int(logits.argmax())
        return self._draw(rid, self._probs(p, logits))

    def accept(self, rid: int, drafts: list[int], logits: torch.Tensor) -> tuple[int, int]:
        """(drafts accepted, the token after them) from the target's ``logits`` [T, V] at the
        fed token and each draft position."""
        p = self.params.get(rid)
        if p is None or p.temperature == 0:
            target = logits[:len(drafts) + 1].argmax(dim=-1).tolist()
            a = 0
            while a < len(drafts) and drafts[a] == target[a]:
                a += 1
            return a, target[a]
        probs = self._probs(p, logits[:len(drafts) + 1])
        gen = self.generators[rid]
        for a, x in enumerate(drafts):
            if float(torch.rand((), generator=gen)) < float(probs[a, x]):
                continue  # accepted with probability p(x)
            residual = probs[a].clone()
            residual[x] = 0.0
            if float(residual.sum()) <= 0.0:  # (p was a point mass on x: cannot happen here)
                return a, x
            return a, self._draw(rid, residual / residual.sum())
        return len(drafts), self._draw(rid, probs[len(drafts)])
