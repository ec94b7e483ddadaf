"""The checks of ``infer-os calibrate``'s arguments, made before any work (each a ``UserError``
naming the flag), and the profile's atomic write."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from sim.errors import UserError

BACKENDS = ("torch", "ort")
# flag -> (attribute, lowest, highest, int or float)
BOUNDS: dict[str, tuple[str, float, float, type]] = {
    "--threads": ("threads", 1, 1024, int),
    "--block-tokens": ("block_tokens", 1, 4096, int),
    "--kv-quant-group": ("kv_quant_group", 8, 4096, int),
    "--budget-s": ("budget_s", 0.1, 86400.0, float),
    "--retries": ("retries", 0, 5, int),
}


def bounded(text: str | float, flag: str, low: float, high: float, kind: type = int) -> Any:
    """``text`` as ``kind`` (int or float) within ``[low, high]``; otherwise a ``UserError``
    naming ``flag`` and the bounds (also for nan, inf and text that is not a number)."""
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"expected {what} from {low:g} to {high:g}, got {text!r}",
                        field=flag) from None
    if not low <= value <= high:  # also rejects nan
        raise UserError(f"expected {what} from {low:g} to {high:g}, got {text}", field=flag)
    return value


def check_args(args: argparse.Namespace) -> None:
    """Every numeric flag parsed and within ``BOUNDS`` (in place), the backend known; a
    ``UserError`` naming the flag otherwise.  Nothing is loaded or timed before this passes."""
    if args.backend not in BACKENDS:
        raise UserError(f"cannot calibrate backend {args.backend!r} (calibrators: "
                        f"{', '.join(BACKENDS)})", field="--backend")
    for flag, (name, low, high, kind) in BOUNDS.items():
        if getattr(args, name) is not None:
            setattr(args, name, bounded(getattr(args, name), flag, low, high, kind))


def check_model(model: str) -> None:
    """The model names a preset or a Hugging Face config (what the calibrated model reads)."""
    from sim.config.model_spec import resolve_model

    try:
        resolve_model(model)
    except UserError as err:
        raise err.at(file=err.file, field=err.field or "--model") from None


def check_out(out: Path) -> None:
    """``--out`` (or the cache file) can be written: not a folder, its folder made now."""
    if out.is_dir():
        raise UserError("is a folder; give a file name for the profile", file=str(out),
                        field="--out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot make the folder {str(out.parent)!r} ({err.strerror or err})",
                        file=str(out), field="--out") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"the folder {str(out.parent)!r} is not writable", file=str(out),
                        field="--out")


def write_profile(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole, or keeps what it held: written to a temporary file next to
    it, then renamed over it; the temporary file is removed whatever happens (Ctrl-C too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write the profile ({err.strerror or err})",
                        file=str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
