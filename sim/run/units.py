"""Readable numbers for tables and reports: bytes (kB, MB, GB), seconds (ms, s), plain numbers;
a missing value (None) reads "-"."""

from __future__ import annotations


def time_unit(max_s: float) -> tuple[float, str]:
    """(factor, unit) to show seconds readably: ms below 2 s."""
    return (1e3, "ms") if max_s < 2 else (1.0, "s")


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(factor, unit) to show bytes readably: GB from 1e9, MB from 1e6, else kB."""
    if max_bytes >= 1e9:
        return 1e-9, "GB"
    return (1e-6, "MB") if max_bytes >= 1e6 else (1e-3, "kB")


def format_bytes(x: float | None) -> str:
    """Bytes in kB, MB or GB with 3 significant digits: "123 MB"."""
    if x is None:
        return "-"
    factor, unit = bytes_unit(x)
    return f"{x * factor:.3g} {unit}"


def format_seconds(x: float | None) -> str:
    """Seconds shown in ms below 1 s, else in s, with 3 significant digits: "45.9 ms"."""
    if x is None:
        return "-"
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def format_number(x: float | None, spec: str = ".4g") -> str:
    """``format(x, spec)``."""
    return "-" if x is None else format(x, spec)
