"""The torch executor's injected faults (``sim.engine.faults``) made real: a slowed device
(a real sleep), a KV allocation cap on the arenas; a mixin of ``TorchExecutor``, which holds
``faults``, ``kv``, ``info`` and the clock these read."""

from __future__ import annotations

import time

import numpy as np


class ArenaCapExceeded(Exception):
    """A KV arena could not grow within the injected allocation cap."""


class InjectedFaults:
    """Methods of ``TorchExecutor`` for the faults a scenario injects."""

    def _slow_down(self, now_s: float, t0: float, segments: list) -> None:
        """A slowed device: sleep (factor - 1) x the step's time so far, for real."""
        factor = self.faults.slow_factor(self.info.name, now_s) if self.faults else 1.0
        if factor > 1.0:
            t1 = self._now()
            time.sleep((factor - 1.0) * (t1 - t0))
            segments.append((self.info.name, "slow", self._now() - t1))

    def _reserve(self, rids: list[int], num_new: int, failed: dict[int, str]) -> list[int]:
        """Grow each request's arena for the step; those that cannot (the allocation cap) go
        to ``failed`` -> the requests the step runs for."""
        if not (self.faults and self.faults.caps):
            return rids
        out = []
        for rid in rids:
            try:
                self.kv.reserve(rid, num_new)
                out.append(rid)
            except ArenaCapExceeded as err:
                failed[rid] = str(err)
        return out

    @staticmethod
    def _all_rows(rids: list[int], step_rids: list[int], emitted: np.ndarray,
                  proposed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row results of the requests that ran, spread over every request of the plan
        (one emitted token and no proposal for the others)."""
        row = {rid: i for i, rid in enumerate(step_rids)}
        all_emitted = np.ones(len(rids), dtype=np.int64)
        all_proposed = None if proposed is None else np.zeros(len(rids), dtype=np.int64)
        for i, rid in enumerate(rids):
            if rid in row:
                all_emitted[i] = emitted[row[rid]]
                if all_proposed is not None:
                    all_proposed[i] = proposed[row[rid]]
        return all_emitted, all_proposed

    def _check_cap(self, rid: int, need_bytes: int) -> None:
        """Raise ``ArenaCapExceeded`` when growing ``rid``'s arena to ``need_bytes`` would take
        the KV arenas held past the active allocation cap (its own old arena is let go)."""
        cap = self.faults.alloc_cap(self._clock_s) if self.faults else None
        if cap is None:
            return
        tb = self._token_bytes
        held = sum(r.capacity * tb for other, r in self.kv.requests.items() if other != rid)
        if held + need_bytes > cap:
            raise ArenaCapExceeded(f"KV allocation of {need_bytes} bytes failed: {held} of the "
                                   f"{int(cap)}-byte allocation cap in use (injected fault)")
