"""Open a GGUF file and read its metadata, every defect a ``UserError`` naming the file (and the
metadata key or tensor): an empty file, one that is not GGUF, one cut short (an interrupted
download), corrupt metadata, values of the wrong type.

``gguf.GGUFReader`` parses with numpy views of the memory-mapped file: a read past the end gives a
short view, which it reports as an unrelated error far from the cause (a failed reshape, an
index error) or, for a corrupt array length, loops over the rest of the file.  ``_CheckedReader``
refuses such reads where they happen, and checks each tensor's data range before the reader
slices it, so that the error names the first tensor the file is missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from sim.errors import UserError

MAGIC = b"GGUF"


class _PastEnd(Exception):
    """The parser wants bytes up to ``end``; ``tensor`` is the one whose data that is, if any."""

    def __init__(self, end: int, tensor: str | None = None):
        super().__init__(end, tensor)
        self.end, self.tensor = end, tensor


class _CheckedReader(gguf.GGUFReader):
    """``GGUFReader`` that raises ``_PastEnd`` instead of reading past the end of the file."""

    def _get(self, offset, dtype, count=1, *args, **kwargs):
        end = int(offset) + np.dtype(dtype).itemsize * int(count)
        if end > len(self.data):
            raise _PastEnd(end)
        return super()._get(offset, dtype, count, *args, **kwargs)

    def _get_field_parts(self, orig_offs, raw_type):
        # an array holds at least 1 byte per element: a corrupt length fails here, at once
        if int(raw_type) == gguf.GGUFValueType.ARRAY:
            length = int(self._get(int(orig_offs) + 4, np.uint64)[0])
            if int(orig_offs) + 12 + length > len(self.data):
                raise _PastEnd(int(orig_offs) + 12 + length)
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_tensors(self, start_offs, fields):
        for field in fields:  # parts: name length, name, n_dims, dims, type, offset (GGUF spec)
            dims, raw_type, offset = field.parts[3], field.parts[4], field.parts[5]
            try:
                kind = gguf.GGMLQuantizationType(int(raw_type[0]))
            except ValueError:
                raise UserError(f"tensor {field.name!r} has an unknown type {int(raw_type[0])}",
                                file=str(self.data.filename)) from None
            block, size = gguf.GGML_QUANT_SIZES[kind]
            end = int(start_offs) + int(offset[0]) + math.prod(int(d) for d in dims) * size // block
            if end > len(self.data):
                raise _PastEnd(end, field.name)
        super()._build_tensors(start_offs, fields)


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """A parsed GGUF file; a ``UserError`` naming ``path`` if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise UserError("GGUF file not found", file=str(path))
    size = path.stat().st_size
    if size == 0:
        raise UserError("empty file (0 bytes), not a GGUF model", file=str(path))
    with path.open("rb") as f:
        magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise UserError(f"not a GGUF file (it starts with {magic!r}, not {MAGIC!r})",
                        file=str(path))
    try:
        return _CheckedReader(path)
    except _PastEnd as short:
        what = f"tensor {short.tensor!r}" if short.tensor else "the metadata"
        raise UserError(f"truncated or corrupt: {what} needs the file to hold {short.end} "
                        f"bytes, it has {size} (an interrupted download?)",
                        file=str(path)) from None
    except UserError:
        raise
    except Exception as err:  # the reader's ValueError, KeyError, UnicodeDecodeError, ...
        raise UserError(f"corrupt GGUF file ({type(err).__name__}: {err})",
                        file=str(path)) from None


# -- metadata -------------------------------------------------------------------------------------
def field_value(reader: gguf.GGUFReader, key: str, required: bool = True) -> Any:
    """The value of metadata ``key`` (None when absent and not ``required``)."""
    field = reader.get_field(key)
    if field is None:
        if required:
            raise UserError("missing GGUF metadata key", file=str(reader.data.filename), field=key)
        return None
    try:
        return field.contents()
    except UnicodeDecodeError:
        raise UserError("text that is not valid UTF-8", file=str(reader.data.filename),
                        field=key) from None


def int_field(reader: gguf.GGUFReader, key: str, default: int | None = None,
              minimum: int = 1) -> int:
    """An integer metadata value >= ``minimum``; ``default`` when absent (required if None)."""
    value = field_value(reader, key, required=default is None)
    if value is None:
        return default  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"expected an integer >= {minimum}, got {_show(value)}",
                        file=str(reader.data.filename), field=key)
    return value


def float_field(reader: gguf.GGUFReader, key: str, default: float | None = None) -> float:
    """A finite number > 0; ``default`` when absent (required if None)."""
    value = field_value(reader, key, required=default is None)
    if value is None:
        return default  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise UserError(f"expected a number > 0, got {_show(value)}",
                        file=str(reader.data.filename), field=key)
    return float(value)


def str_list_field(reader: gguf.GGUFReader, key: str, required: bool = True) -> list[str] | None:
    """A list of strings (``tokenizer.ggml.tokens``, ``.merges``)."""
    value = field_value(reader, key, required)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"expected a list of strings, got {_show(value)}",
                        file=str(reader.data.filename), field=key)
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
