"""Bundled scenario files, listed by ``infer-os list`` and located by name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def locate(name_or_path: str) -> Path | None:
    """A bundled scenario's file, or the path itself when it exists; None when neither."""
    bundled = HERE / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    path = Path(name_or_path)
    return path if path.is_file() else None
