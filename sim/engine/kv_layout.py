"""How the KV a ``PagedKVStore`` holds is laid out and counted: one strategy object per store.

- ``BlockLayout`` (the simulator's own view): every block counted whole at the precision the
  store gives it, and a tier change counts the moment it is decided.
- ``TokenTailLayout`` (the torch executor's view, which the calibrated cost model predicts): a
  request's partial last block is FP16 and counted by tokens (the executor's arenas), K/V are one
  token behind (a token's K/V are written by the step that feeds it), and a tier change reaches a
  request only at the end of a step it takes part in (``apply``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from policies import Precision

if TYPE_CHECKING:
    from sim.engine.kv_store import PagedKVStore
    from sim.engine.state import RunState


class KVLayout(Protocol):
    """Contract: the store calls ``admitted``/``freed`` once per request; the engine calls
    ``step_ended`` after each step with the tokens each request emitted, and ``observe`` to
    record what is held; ``check`` asserts the layout's own books (``check_integrity``)."""

    name: str

    def admitted(self, rid: int) -> None: ...

    def freed(self, rid: int) -> None: ...

    def step_ended(self, rids: np.ndarray, emitted: np.ndarray) -> None: ...

    def observe(self, state: RunState, now: float) -> None: ...

    def check(self) -> None: ...


class BlockLayout:
    """Whole blocks at their current precision; nothing to apply at the end of a step."""

    name = "blocks"

    def __init__(self, store: PagedKVStore):
        self.store = store

    def admitted(self, rid: int) -> None:
        pass

    def freed(self, rid: int) -> None:
        pass

    def step_ended(self, rids: np.ndarray, emitted: np.ndarray) -> None:
        pass

    def observe(self, state: RunState, now: float) -> None:
        s = self.store
        state.observe_kv_blocks(s.device_used_bytes, s.bytes_by_precision, s.fp16_equiv_bytes,
                                now)

    def check(self) -> None:
        pass


class TokenTailLayout:
    """The torch executor's KV: its full blocks at the precision last applied, every other stored
    token (the partial last block, full blocks not tiered yet) at FP16, counted by tokens."""

    name = "fp16-tokens"

    def __init__(self, store: PagedKVStore):
        self.store = store
        self._applied: dict[int, bytearray] = {}  # request id -> precision held, full blocks
        self.stored_tokens = np.zeros(len(store.req_tokens), dtype=np.int64)  # K/V stored

    def admitted(self, rid: int) -> None:
        self._applied[rid] = bytearray()

    def freed(self, rid: int) -> None:
        del self._applied[rid]
        self.stored_tokens[rid] = 0

    def step_ended(self, rids: np.ndarray, emitted: np.ndarray) -> None:
        # the executor stored every emitted token but the last (its K/V are written by the step
        # that feeds it), accepted drafts past the output length included
        self.apply(rids, self.store.req_tokens[rids] + emitted - 1)

    def apply(self, rids: np.ndarray, kv_tokens: np.ndarray) -> None:
        """The end of a step, as an executor that tiers blocks in place sees it (the torch
        executor applies tiers at the end of each step): request ``rids[i]`` now stores the K/V
        of ``kv_tokens[i]`` tokens, and each of its full blocks among them holds the precision the
        store gives it.  Requests not in the step keep what was last applied to them: a tiering
        decision about a request that is not in the step (a demotion decided when another
        request joined, say) frees nothing until that request is in a step.  A block never
        applied is FP16."""
        bt = self.store.block_tokens
        for rid, tokens in zip(rids.tolist(), kv_tokens.tolist()):
            blocks = self.store.blocks_raw(rid)
            n = min(tokens // bt, len(blocks))
            self._applied[rid][:n] = blocks[:n]
            self.stored_tokens[rid] = tokens

    def token_bytes(self) -> tuple[dict[str, int], int]:
        """Bytes by precision as the executor holds them (offloaded blocks in the host tier) and
        the FP16 equivalent of the resident tokens."""
        s = self.store
        out = {p.name.lower(): 0 for p in Precision}
        per_block = (s.device_block_bytes + s.host_block_bytes).tolist()
        bt = s.block_tokens
        per_token = int(s.device_block_bytes[Precision.FP16]) // bt
        fp16_tokens = absent = 0
        for rid, applied in self._applied.items():
            fp16_tokens += int(self.stored_tokens[rid]) - len(applied) * bt
            for p in Precision:
                n = applied.count(p)
                if n:
                    out[p.name.lower()] += n * per_block[p]
            absent += applied.count(Precision.OFFLOADED) + applied.count(Precision.EVICTED)
        out["fp16"] += fp16_tokens * per_token
        resident = int(self.stored_tokens.sum()) - absent * bt
        return out, resident * per_token

    def observe(self, state: RunState, now: float) -> None:
        state.observe_kv_bytes(*self.token_bytes(), now)

    def check(self) -> None:
        s = self.store
        assert self._applied.keys() == set(s.request_ids())
        for rid, applied in self._applied.items():  # full stored blocks, a prefix of the blocks
            assert len(applied) * s.block_tokens <= self.stored_tokens[rid], rid
            assert len(applied) <= len(s.blocks_raw(rid)), rid


KV_LAYOUTS = {layout.name: layout for layout in (BlockLayout, TokenTailLayout)}
