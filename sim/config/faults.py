"""Fault injection (a scenario's ``faults:`` block): events the engine applies during a run.
Placeholder: the schema is being written (issue: hardening, faults and overload)."""

from __future__ import annotations

from sim.config.frozen import Frozen


class FaultsConfig(Frozen):
    """The faults injected into a run; none by default."""
