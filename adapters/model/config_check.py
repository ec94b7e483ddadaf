"""The values of a Hugging Face ``config.json`` that our transformer reads beyond the shape, checked
before a model is built from them: each is a ``UserError`` naming the file and the key (a string
where a number belongs, a table that is not one, ...), never a torch error later.  The shape's
sizes (layers, hidden, heads, vocabulary, ...) are checked by ``sim.config.model_spec.
spec_from_hf_dict``, which both the simulator and the torch adapter use."""

from __future__ import annotations

import math
from typing import Any

from sim.errors import UserError

_NUMBERS = {"gpt2": ("layer_norm_epsilon",), "llama": ("rms_norm_eps", "rope_theta")}
_FLAGS = ("attention_bias", "mlp_bias")
_TABLES = ("rope_parameters", "rope_scaling")


def check_hf_config(cfg: dict[str, Any], arch: str, file: str | None) -> None:
    """Raise a ``UserError`` for the first value of ``cfg`` (architecture ``gpt2`` or ``llama``)
    outside the shape that is of the wrong type or out of range."""
    for key in _NUMBERS[arch]:
        _positive_number(cfg, key, key, file)
    for key in _FLAGS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise UserError(f"expected true or false, got {cfg[key]!r}", file=file, field=key)
    for key in _TABLES:
        table = cfg.get(key)
        if table is not None and not isinstance(table, dict):
            raise UserError(f"expected an object, got {table!r}", file=file, field=key)
        if table is not None:
            _positive_number(table, "rope_theta", f"{key}.rope_theta", file)
    window = cfg.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise UserError(f"expected an integer >= 1 or null, got {window!r}", file=file,
                        field="sliding_window")


def _positive_number(table: dict[str, Any], key: str, field: str, file: str | None) -> None:
    value = table.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise UserError(f"expected a number > 0, got {value!r}", file=file, field=field)
