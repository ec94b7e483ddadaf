"""The engine's tiering driver (sim.engine.retier) as a state machine: a scripted policy moves
blocks between tiers at random; tokens are conserved, budgets hold, a restored block returns to the
precision it had, and every move is charged as the kind of move it is (a re-quantizing to the
precision it went to)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from policies import Precision as P
from policies import TieringDecision, TieringObservation
from sim.config.scenario import AttentionConfig, QualityConfig
from sim.engine.kv_store import PagedKVStore, block_bytes
from sim.engine.retier import Retierer
from sim.quality.attention import AttentionModel
from sim.quality.model import penalties

BLOCK_TOKENS = 4
VALUES_PER_TOKEN = 8  # 32 values a block: FP16 64 bytes, INT8 36, INT4 20, INT2 12


@dataclass
class Scripted:
    """A tiering policy that returns whatever decision the test queued."""

    kind: str = "scripted"
    observes_blocks: ClassVar[bool] = True
    queued: list = field(default_factory=list)
    seen: list = field(default_factory=list)

    def decide(self, obs: TieringObservation) -> TieringDecision:
        self.seen.append(obs)
        return self.queued.pop() if self.queued else TieringDecision()


class RetierMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.store = PagedKVStore(BLOCK_TOKENS, block_bytes(VALUES_PER_TOKEN, BLOCK_TOKENS, 32),
                                  10_000, 640, 8)
        self.policy = Scripted()
        self.retier = Retierer(self.policy, AttentionModel(AttentionConfig(), 0),
                               penalties(QualityConfig()), VALUES_PER_TOKEN * BLOCK_TOKENS)
        self.tokens: dict[int, int] = {}
        self.precision: dict[tuple[int, int], P] = {}
        self.former: dict[tuple[int, int], P] = {}  # precision before the last demotion
        self.step = 0

    def _apply(self, rid: int, index: int, new: P, keep_backup: bool) -> None:
        self.policy.queued.append(TieringDecision(((rid, index, new),), keep_backup=keep_backup))
        before = dict(self.retier.moves)
        into = list(self.retier.pending.requant_into)
        self.step += 1
        self.retier.retier(self.store, sorted(self.tokens), self.step)
        old = self.precision[(rid, index)]
        if old < new <= P.INT2:  # re-quantized: charged to the precision it went to
            into[new - 1] += VALUES_PER_TOKEN * BLOCK_TOKENS
        assert self.retier.pending.requant_into == into
        assert sum(into) == self.retier.pending.requant_values
        obs = self.policy.seen[-1]  # what the policy saw names exactly the live blocks
        assert {(b.request_id, b.index): b.precision for b in obs.blocks} == self.precision
        assert all(0 <= b.attention_share <= 1 for b in obs.blocks)
        old = self.precision[(rid, index)]
        if new != old:
            assert sum(self.retier.moves.values()) == sum(before.values()) + 1
            if new > old:
                self.former[(rid, index)] = old
        self.precision[(rid, index)] = new

    @precondition(lambda self: len(self.tokens) < 4)
    @rule(tokens=st.integers(1, 40))
    def admit(self, tokens):
        rid = next(r for r in range(8) if r not in self.tokens)
        self.store.admit(rid, tokens, tokens + 8, P.FP16)
        self.tokens[rid] = tokens
        for i in range(-(-tokens // BLOCK_TOKENS)):
            self.precision[(rid, i)] = P.FP16

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), n=st.integers(1, 8))
    def grow(self, data, n):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        n = min(n, 8 - (self.tokens[rid] - self.store.tokens(rid)))
        self.store.append_tokens_many(np.array([rid]), np.array([n]), P.FP16)
        self.tokens[rid] += n
        for i in range(-(-self.tokens[rid] // BLOCK_TOKENS)):
            self.precision.setdefault((rid, i), P.FP16)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), keep_backup=st.booleans())
    def demote(self, data, keep_backup):
        key = data.draw(st.sampled_from(sorted(self.precision)))
        old = self.precision[key]
        lower = [p for p in P if p > old]
        if lower and self._fits(key, data.draw(st.sampled_from(lower))):
            self._apply(*key, self._last, keep_backup)

    @precondition(lambda self: self.former)
    @rule(data=st.data())
    def restore(self, data):
        key = data.draw(st.sampled_from(sorted(self.former)))
        if self.precision[key] <= self.former[key] or not self._fits(key, self.former[key]):
            return
        had_copy = self.store.has_backup(*key) or self.precision[key] == P.OFFLOADED
        pending = self.retier.pending.recompute_tokens
        self._apply(*key, self.former.pop(key), keep_backup=False)
        assert self.store.blocks(key[0])[key[1]] == self.precision[key]  # its former precision
        recomputed = self.retier.pending.recompute_tokens - pending
        assert recomputed == (0 if had_copy else BLOCK_TOKENS)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def finish(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.store.free(rid)
        self.retier.forget(rid)
        del self.tokens[rid]
        for key in [k for k in self.precision if k[0] == rid]:
            self.precision.pop(key)
            self.former.pop(key, None)

    def _fits(self, key, new: P) -> bool:
        """Would the store take the change?  (A refused one is the policy's bug: not tested.)"""
        s, old = self.store, self.precision[key]
        fp16 = int(s.device_block_bytes[P.FP16])
        dev = int(s.device_block_bytes[new] - s.device_block_bytes[old])
        host = fp16 * ((new == P.OFFLOADED) - (old == P.OFFLOADED)) + 2 * fp16
        self._last = new
        return (s.device_used_bytes + s.reserved_bytes + dev <= s.device_budget_bytes
                and s.host_used_bytes + host <= s.host_budget_bytes)

    @invariant()
    def books_balance(self):
        s = self.store
        for rid, tokens in self.tokens.items():
            assert s.tokens(rid) == tokens  # tokens conserved across tiers, evicted included
            assert s.blocks(rid) == tuple(self.precision[(rid, i)]
                                          for i in range(len(s.blocks(rid))))
        s.check_integrity()
        assert s.device_used_bytes + s.reserved_bytes <= s.device_budget_bytes
        assert s.host_used_bytes <= s.host_budget_bytes


RetierMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                           deadline=None, derandomize=True, database=None)
TestRetier = RetierMachine.TestCase
