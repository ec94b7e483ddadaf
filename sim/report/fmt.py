"""Readable numbers for every page of ``infer-os report``: axes, hovers and tables all format
through here, so a quantity reads the same everywhere (bytes in kB/MB/GB, seconds in us/ms/s,
fractions in %, a missing value as "-").

Units are decimal (1 MB = 10^6 bytes), as scenarios write budgets (``64.0e6`` is "64 MB").
An axis is drawn in one unit chosen from its largest value (``bytes_unit``, ``time_unit``): the
values are multiplied by the factor and the unit goes in the axis title."""

from __future__ import annotations

import math

MISSING = "-"
STAT_KEYS = ("mean", "p10", "p50", "p90", "p99", "min", "max", "median")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(factor, unit) to show bytes up to ``max_bytes``: GB from 1e9, MB from 1e6, kB from 1e3,
    else B."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(max_bytes) >= scale:
            return 1 / scale, unit
    return 1.0, "B"


def time_unit(max_s: float) -> tuple[float, str]:
    """(factor, unit) to show seconds up to ``max_s``: s from 2 s, ms from 2 ms, else us."""
    if abs(max_s) >= 2:
        return 1.0, "s"
    return (1e3, "ms") if abs(max_s) >= 2e-3 else (1e6, "us")


def format_bytes(x: float | None) -> str:
    """"64 MB", "1.5 GB", "512 B" (3 significant digits)."""
    if not _finite(x):
        return MISSING
    factor, unit = bytes_unit(x)
    return f"{x * factor:.3g} {unit}"


def format_seconds(x: float | None) -> str:
    """"45.9 ms", "2.5 s", "80 us" (3 significant digits)."""
    if not _finite(x):
        return MISSING
    if x == 0:
        return "0 s"
    factor, unit = next((f, u) for lo, f, u in ((1.0, 1.0, "s"), (1e-3, 1e3, "ms"),
                                                 (0.0, 1e6, "us")) if abs(x) >= lo)
    return f"{x * factor:.3g} {unit}"


def format_number(x: float | None, spec: str = ".4g") -> str:
    """``format(x, spec)``; large numbers get thousands separators ("1,250")."""
    if not _finite(x):
        return MISSING
    if spec == "d":
        return f"{int(x):,d}"
    if spec.endswith("g") and abs(x) >= 1e4:
        return f"{x:,.0f}"
    return format(x, spec)


def format_pct(frac: float | None, signed: bool = False, digits: int = 1) -> str:
    """A fraction as a percentage: 0.473 -> "47.3%"; ``signed``: "+4.7%" / "-4.7%"."""
    if not _finite(frac):
        return MISSING
    return format(frac, f"{'+' if signed else ''}.{digits}%")


def format_value(name: str, value, unit: bool = True) -> str:
    """A value named by a column or axis (``kv_budget_bytes``, ``ttft_p50_s``, ``quality_pct``,
    ``kv_memory_saved_frac``...), formatted by what its name says it measures; text as it is.
    ``unit=False``: no "tok/s" after a rate (a table's header names it)."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    parts = name.split(".")
    leaf = parts[-2] if len(parts) > 1 and parts[-1] in STAT_KEYS else parts[-1]
    if leaf.endswith("bytes"):
        return format_bytes(value)
    if leaf.endswith("_s") and not leaf.endswith("tok_s"):
        return format_seconds(value)
    if leaf.endswith("_frac"):
        return format_pct(value)
    if leaf.endswith("_pct"):
        return f"{value:.2f}%"
    if leaf.endswith("tok_s"):
        return format_number(value, ".4g") + (" tok/s" if unit else "")
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,d}"
    return format_number(value)


def scaled(values, factor: float) -> list[float | None]:
    """The values times ``factor`` (None and non-finite values as None, for Plotly gaps)."""
    return [v * factor if _finite(v) else None for v in values]
