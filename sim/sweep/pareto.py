"""Pareto fronts and best points over a results table (rows of named metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Sense = Literal["max", "min"]


def _usable(row: Mapping, columns: Sequence[str]) -> bool:
    return all(isinstance(row.get(c), (int, float)) and np.isfinite(row[c]) for c in columns)


def pareto_front(rows: Sequence[Mapping], objectives: Mapping[str, Sense]) -> list[int]:
    """Indices (ascending) of the rows no other row dominates.  Row a dominates row b when a is
    at least as good on every objective and strictly better on one; rows with a missing or
    non-finite objective take no part.  Equal rows are all on the front."""
    names = list(objectives)
    keep = [i for i, r in enumerate(rows) if _usable(r, names)]
    if not keep:
        return []
    sign = np.array([1.0 if objectives[n] == "max" else -1.0 for n in names])
    scores = np.array([[rows[i][n] for n in names] for i in keep], dtype=float) * sign
    front = []
    for j, score in enumerate(scores):  # O(n^2) comparisons, vectorised over the other rows
        dominated = np.all(scores >= score, axis=1) & np.any(scores > score, axis=1)
        if not dominated.any():
            front.append(keep[j])
    return front


def best(rows: Sequence[Mapping], objective: str, sense: Sense,
         tie_break: str | None = None) -> int | None:
    """Index of the best row on ``objective`` (ties: the better ``tie_break``, a maximised
    column, then the first row); None when no row has the objective."""
    candidates = [i for i, r in enumerate(rows) if _usable(r, [objective])]
    if not candidates:
        return None
    sign = 1.0 if sense == "max" else -1.0

    def key(i: int) -> tuple[float, float, int]:
        tb = rows[i].get(tie_break) if tie_break else None
        return (sign * rows[i][objective],
                tb if isinstance(tb, (int, float)) and np.isfinite(tb) else -np.inf, -i)

    return max(candidates, key=key)
