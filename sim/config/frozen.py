"""The base of every validated configuration: a frozen pydantic model that rejects unknown keys
and non-finite numbers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sim.errors import UserError

# Limits shared by the schemas (docs/simulator-notes.md#limits-and-validation); each schema's own
# are next to its fields.
MAX_REQUESTS = 10_000_000  # a run keeps per-request arrays and SimPy events for every request
# token counts (prompts, outputs, contexts): above the longest published context (Llama 4 Scout,
# 10M tokens), and products with per-token sizes stay far inside int64
MAX_TOKENS = 2**24
MAX_SIM_S = 1.0e9  # ~30 years of engine clock; float64 seconds still resolve 0.1 us there
MAX_BYTES = 1.0e15  # 1 PB; a byte count stays an exact integer in float64 (< 2**53)
MAX_LAYERS = 1024  # transformer layers (a model's, a layer-skip draft's)
MAX_PPL = 1.0e8  # perplexity and delta-PPL: above a uniform guess over any vocabulary (2**24)


class Frozen(BaseModel):
    """Validated once, never mutated; an unknown key is an error naming it.  Every float field,
    nested or optional (``float | None``, ``dict[str, float]``), must be finite: one rule for
    every schema (docs/simulator-notes.md#limits-and-validation), unless the field says
    otherwise (``Field(allow_inf_nan=True)`` and a comment why)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def user_error(err: ValidationError, data: Any, *, file: str | None = None, where: str = "",
               prefix: str = "") -> UserError:
    """Every error pydantic collected in ``err``, one ``UserError`` line each, at ``file`` and
    the field ``where`` + the dotted path of the value in ``data`` (the input that failed; a
    union's tag, which pydantic puts in the path, left out), the message after ``prefix``."""
    errors = []
    for e in err.errors():
        path = _path(e["loc"], data)
        field = (where + path) if path else (where.removesuffix(" -> ") or None)
        message = prefix + e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and isinstance(value, _SCALARS):
            message += f" (got {_shown(value)})"
        errors.append(UserError(message, file=file, field=field))
    return UserError.collect(errors)


_SCALARS = (bool, int, float, str)


def _shown(value: bool | int | float | str) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's 4,300 printable digits
        return "an integer of more than 4,300 digits"
    return text if len(text) <= 40 else text[:37] + "..."


def _path(loc: tuple[int | str, ...], data: Any) -> str:
    """``loc`` as a dotted path of keys of ``data``: an element that is not a key there but the
    ``kind`` of the mapping there (a discriminated union's tag) is left out, and so is the
    ``[key]`` pydantic appends for a bad key of a dict."""
    parts, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i < len(loc) - 1 and isinstance(node, dict) and node.get("kind") == part:
            continue
        elif part == "[key]":  # the error is the key's, the path already names it
            continue
        else:
            node = None
        parts.append(str(part))
    return ".".join(parts)
