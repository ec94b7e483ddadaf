"""What a sweep value (an axis value, a fixed override, a baseline value) may be: JSON data (null,
booleans, 64-bit integers, finite floats, strings, lists and mappings with string keys) of at most
``MAX_VALUE_CHARS`` characters as JSON.  The size is measured without expanding the value: a YAML
alias repeated inside itself makes a small file a value of gigabytes (or a cycle)."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

MAX_VALUE_CHARS = 65_536  # as compact JSON
MAX_DEPTH = 32  # nesting of lists and mappings
INT64 = (-(2**63), 2**63 - 1)


def problem(value: Any) -> str | None:
    """Why ``value`` cannot be a sweep value, or None.  Walks the value as a tree (shared parts
    counted each time they appear, as JSON would write them) and stops at the size limit."""
    size, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(node, dict):
            size += 1 + 2 * len(node)  # braces, colons and commas
            for key, item in node.items():
                if not isinstance(key, str):
                    return f"a mapping key is not a string but {_kind(key)} (quote it)"
                size += len(key) + 2
                stack.append((item, depth + 1))
        elif isinstance(node, (list, tuple)):
            size += 1 + max(1, len(node))  # brackets and commas
            if size <= MAX_VALUE_CHARS:
                stack.extend((item, depth + 1) for item in node)
        else:
            leaf, why = _leaf(node)
            if why:
                return why
            size += leaf
        if size > MAX_VALUE_CHARS:
            return (f"larger than {MAX_VALUE_CHARS:,} characters as JSON (a YAML alias used "
                    "over and over?)")
    return None


def _leaf(node: Any) -> tuple[int, str | None]:
    """A scalar's length as JSON, or why it is not a sweep value."""
    if node is None or isinstance(node, bool):
        return 5, None
    if isinstance(node, int):
        if not INT64[0] <= node <= INT64[1]:
            return 0, "an integer beyond the 64-bit range"
        return len(str(node)), None
    if isinstance(node, float):
        if not math.isfinite(node):
            return 0, f"not a finite number ({node})"
        return len(repr(node)), None
    if isinstance(node, str):
        return len(node) + 2, None
    if isinstance(node, datetime.date):  # YAML reads 2024-01-01 as a date
        text = node.isoformat()
        return 0, f"a YAML date or time ({text}): quote it ('{text}') to give it as a string"
    return 0, (f"{_kind(node)} is not a sweep value (null, booleans, numbers, strings, "
               "lists and mappings are)")


def _kind(node: Any) -> str:
    """A YAML type's name: a set, a binary, an int, ..."""
    name = {bytes: "binary"}.get(type(node), type(node).__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def canonical(value: Any) -> str:
    """The value as compact, key-sorted JSON (what point ids hash); only for a checked value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
