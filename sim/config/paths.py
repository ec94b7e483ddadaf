"""One rule for the paths a scenario names (models, hardware and quality profiles, traces,
acceptance traces, provider config files): ``~`` and ``$VARS`` expanded; an absolute path as is; a
relative path next to the scenario file when it exists there, else as given (relative to the
working directory, or a bundled name such as a model preset)."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(value: str | os.PathLike, base_dir: Path | None) -> Path:
    """``value`` resolved by the rule above against ``base_dir``, the scenario's folder."""
    path = Path(os.path.expandvars(os.fspath(value))).expanduser()
    if path.is_absolute() or base_dir is None:
        return path
    near = Path(base_dir) / path
    return near if near.exists() else path
