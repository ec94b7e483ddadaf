"""One rule for the paths a scenario names (models, hardware and quality profiles, traces,
acceptance traces, provider config files):

- ``~`` and ``$VARS`` are expanded; an absolute path is used as is;
- a relative path is the file next to the scenario when it exists there, else the one relative to
  the working directory when that exists;
- a relative path found in neither place is reported next to the scenario (where the error
  message will point);
- a path the system cannot even look up (too long, a NUL character) exists nowhere: reading it
  is then the error (``sim.config.yaml_io.read_text``).

Bundled names (a model preset, a hardware or quality profile) are not paths: callers check them
first (a model spec that names a preset is that preset).
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(value: str | os.PathLike, base_dir: Path | None) -> Path:
    """``value`` resolved by the rule above against ``base_dir``, the scenario's folder."""
    path = Path(os.path.expandvars(os.fspath(value))).expanduser()
    if path.is_absolute() or base_dir is None:
        return path
    near = Path(base_dir) / path
    return path if exists(path) and not exists(near) else near


def exists(path: Path) -> bool:
    """``path.exists()``, False where the system refuses to look the path up."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def cache_folder(name: str) -> Path:
    """Where infer-os keeps what it computes once per machine (calibrations, ONNX exports,
    prepared and compiled models): ``$INFER_OS_CACHE`` (default ``~/.cache/infer-os``), then
    ``name``.  Output locations, so not resolved against a scenario."""
    root = os.environ.get("INFER_OS_CACHE") or Path.home() / ".cache" / "infer-os"
    return Path(root).expanduser() / name
