"""A synthetic attention model for the simulator: how much of each decode step's attention every
KV block of a request receives, so that tiering policies have attention mass, access counts and
relevance to observe without a real model.  Real executors feed ``MeasuredAttention`` (below)
instead.

share of block b (of n) ∝ sink·[b = 0] + exp(-(n - 1 - b) / recency_blocks) + heavy·h_b, where h_b
is a per-block "heavy hitter" weight drawn log-normal (median 1) from a stream seeded by (seed,
request): attention sinks (Xiao et al. 2023), recency, and a few heavy hitters (Zhang et al. 2023).
Relevance (a stand-in for the cosine of a block's mean key to recent queries) is (h - 1) / (h + 1).
An access is counted for a block in each step where it draws more than a uniform share of the
attention (counting every read would make every resident block equally "frequent").
"""

from __future__ import annotations

import numpy as np

from sim.config.scenario import AttentionConfig


class AttentionModel:
    """Per request, accumulates attention mass and access counts of its blocks between re-tiering
    passes (``advance``); all arrays are indexed by block."""

    def __init__(self, cfg: AttentionConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self._heavy: dict[int, np.ndarray] = {}
        self.mass: dict[int, np.ndarray] = {}
        self.access: dict[int, np.ndarray] = {}

    def heavy(self, rid: int, n: int) -> np.ndarray:
        h = self._heavy.get(rid)
        if h is None or len(h) < n:
            rng = np.random.default_rng([self.seed, rid])
            h = self._heavy[rid] = rng.lognormal(0.0, self.cfg.heavy_sigma, size=max(n, 256))
        return h[:n]

    def shares(self, rid: int, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros(0)
        distance = np.arange(n - 1, -1, -1, dtype=np.float64)
        raw = np.exp(-distance / self.cfg.recency_blocks) + self.cfg.heavy * self.heavy(rid, n)
        raw[0] += self.cfg.sink
        return raw / raw.sum()

    def relevance(self, rid: int, n: int) -> np.ndarray:
        h = self.heavy(rid, n)
        return (h - 1.0) / (h + 1.0)

    def advance(self, rid: int, resident: np.ndarray, steps: int) -> np.ndarray:
        """Credit ``steps`` decode steps of attention to a request's resident blocks (the boolean
        mask); returns the current shares (over resident blocks)."""
        n = len(resident)
        shares = self.shares(rid, n) * resident
        total = shares.sum()
        if total > 0:
            shares = shares / total
        # an access = a step in which the block drew more than a uniform share of attention
        accessed = shares > 1.0 / max(int(resident.sum()), 1)
        for store, add in ((self.mass, shares * steps), (self.access, accessed * steps)):
            old = store.get(rid)
            grown = np.zeros(n)
            if old is not None:
                grown[:len(old)] = old[:n]
            store[rid] = grown + add
        return shares

    def forget(self, rid: int) -> None:
        for store in (self._heavy, self.mass, self.access):
            store.pop(rid, None)


class MeasuredAttention:
    """The same interface as ``AttentionModel``, fed by a real executor with the attention each
    block drew in each step (``record``), so that tiering policies observe the model itself.

    Per block: ``mass`` sums the measured shares over the recorded steps; ``access`` counts the
    steps in which the block drew more than a uniform share; ``shares`` (the quality estimate's
    input) are the latest measured shares, a block that is absent now (offloaded, evicted)
    standing for what it would draw if restored: the share it had when last resident, diluted by
    how the resident context grew since (x resident blocks then / resident blocks now: the same
    weight against the average block).  Undiluted, a block evicted early, when a few blocks
    shared the attention, kept a share several times what it could draw now; the quality model
    over-predicted ``progressive``'s offloads 2x (docs/validation.md, "How much a measured ΔPPL
    moves").  Relevance is (r - 1) / (r + 1) with r = the latest share over a uniform share (0 for
    an average block; undiluted), the synthetic model's form with the measured share in place of
    the heavy-hitter weight; ``advance`` gives the resident blocks' shares, which dilution does
    not touch.
    """

    def __init__(self) -> None:
        self.mass: dict[int, np.ndarray] = {}
        self.access: dict[int, np.ndarray] = {}
        self._last: dict[int, np.ndarray] = {}
        self._then: dict[int, np.ndarray] = {}  # resident blocks when each was last resident
        self._current: dict[int, tuple[np.ndarray, int]] = {}  # latest step: present, resident

    @staticmethod
    def _grown(store: dict[int, np.ndarray], rid: int, n: int) -> np.ndarray:
        old = store.get(rid)
        if old is not None and len(old) >= n:
            return old
        grown = np.zeros(n)
        if old is not None:
            grown[:len(old)] = old
        store[rid] = grown
        return grown

    def record(self, rid: int, shares: np.ndarray) -> None:
        """One step's measured shares over a request's blocks (0 for absent blocks)."""
        n = len(shares)
        present = shares > 0
        last = self._grown(self._last, rid, n)
        last[:n][present] = shares[present]
        self._grown(self.mass, rid, n)[:n] += shares
        resident = max(int(present.sum()), 1)
        self._grown(self.access, rid, n)[:n] += shares > 1.0 / resident
        self._grown(self._then, rid, n)[:n][present] = resident
        self._current[rid] = present.copy(), resident

    def _latest(self, rid: int, n: int) -> np.ndarray:
        last = self._grown(self._last, rid, n)[:n]
        total = last.sum()
        return last / total if total > 0 else np.full(n, 1.0 / max(n, 1))

    def shares(self, rid: int, n: int) -> np.ndarray:
        last = self._grown(self._last, rid, n)[:n].copy()
        present, resident = self._current.get(rid, (np.zeros(0, dtype=bool), 1))
        absent = np.ones(n, dtype=bool)
        absent[:min(len(present), n)] = ~present[:n]
        then = self._grown(self._then, rid, n)[:n]
        absent &= then > 0
        last[absent] *= then[absent] / resident
        total = last.sum()
        return last / total if total > 0 else np.full(n, 1.0 / max(n, 1))

    def relevance(self, rid: int, n: int) -> np.ndarray:
        r = self._latest(rid, n) * max(n, 1)
        return (r - 1.0) / (r + 1.0)

    def advance(self, rid: int, resident: np.ndarray, steps: int) -> np.ndarray:
        """The latest shares over the resident blocks (measurements accrue in ``record``)."""
        n = len(resident)
        self._grown(self.mass, rid, n)
        self._grown(self.access, rid, n)
        shares = self._latest(rid, n) * resident
        total = shares.sum()
        return shares / total if total > 0 else shares

    def forget(self, rid: int) -> None:
        for store in (self.mass, self.access, self._last, self._then, self._current):
            store.pop(rid, None)
