"""Reading the text files infer-os is given (scenarios, sweeps, hardware, quality and calibration
profiles, ``config.json``, traces) into plain data, by one set of rules:

- the bytes must be UTF-8 text, at most ``MAX_FILE_BYTES`` of them;
- YAML numbers are read as YAML 1.2 writes them: ``1e9`` and ``1.0e9`` are floats (PyYAML's
  YAML 1.1 reads both as strings); ``.inf`` and ``.nan`` are floats too, which every schema then
  refuses (``sim.config.frozen``: finite unless a field says otherwise); the data holds only
  what JSON can (no dates: ``2024-01-01`` is a string, as in YAML 1.2);
- a mapping key must be a string and may appear once in its mapping (PyYAML keeps the last
  silently); JSON objects likewise, and JSON may not hold ``NaN`` or ``Infinity``;
- a document may nest ``MAX_DEPTH`` levels and hold ``MAX_NODES`` values once its aliases are
  expanded (a "billion laughs" document is a few lines that expand to billions), both counted
  before anything is built from it.

Every problem is a ``UserError`` naming the file (and the key's dotted path where there is one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sim.errors import UserError

# Nesting of mappings and sequences: a scenario needs 6 levels; every consumer of the data
# (pydantic, copy.deepcopy, the YAML composer itself) recurses once per level.
MAX_DEPTH = 64
# Values in a document once aliases are expanded: a calibration or quality profile holds a few
# hundred, a large sweep a few thousand; a million keeps validation well under a second.
MAX_NODES = 1_000_000
# Bytes of a file read whole (all but traces, which are streamed): input files are kilobytes, and
# the pure-Python YAML parser reads a few MB per second.
MAX_FILE_BYTES = 16 * 2**20

_LONG_INT = "an integer of more than 4,300 digits"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
# the types of YAML 1.1 that JSON has no value for ("!!set", ...: invalid YAML here)
_NOT_JSON = {f"tag:yaml.org,2002:{name}" for name in ("timestamp", "binary", "set", "omap",
                                                       "pairs")}
# PyYAML's YAML 1.1 float pattern with the YAML 1.2 forms added: an exponent without a sign or
# without a fraction (1e9, 1.0e9, 2E-3) and a signed leading dot (-.5)
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats, JSON's types only (no dates, sets, binary:
    ``2024-01-01`` is a string, as in YAML 1.2), and a nesting limit while composing."""

    yaml_implicit_resolvers = {
        first: [(tag, _FLOAT_12 if tag == _FLOAT else regexp) for tag, regexp in resolvers
                if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    yaml_constructors = {tag: make for tag, make in yaml.SafeLoader.yaml_constructors.items()
                         if tag not in _NOT_JSON}

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text; ``UserError`` when it cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise UserError(f"cannot read {what} ({err.strerror})", file=str(path)) from None
    except ValueError:  # a NUL character in the path
        raise UserError(f"cannot read {what} (a NUL character in the path)",
                        file=str(path).replace("\0", "\\0")) from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"larger than {MAX_FILE_BYTES // 2**20} MiB", file=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", file=str(path)) from None


def parse_yaml(text: str, file: str | None = None) -> Any:
    """The data of the YAML document ``text`` (None when empty); ``UserError`` at ``file`` (and
    the key's dotted path) for invalid YAML or a document that breaks the rules above."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _Checker(file).walk(node, (), 0)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"invalid YAML{line} ({problem})", file=file) from None
    except ValueError:  # Python's limit on the digits of an integer
        raise UserError(f"invalid YAML ({_LONG_INT})", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | Path, what: str = "file") -> Any:
    """The data of the YAML file at ``path`` (see ``parse_yaml``)."""
    return parse_yaml(read_text(path, what), file=str(path))


def load_json(path: str | Path, what: str = "file") -> Any:
    """The data of the JSON file at ``path``: objects without repeated keys, no NaN or
    Infinity, nested at most as deep as Python's recursion allows."""
    file = str(path)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise UserError("duplicate key", file=file, field=key)
            out[key] = value
        return out

    def constant(name: str) -> float:
        raise UserError(f"{name} is not a JSON number", file=file)

    text = read_text(path, what)
    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON at line {err.lineno} ({err.msg})", file=file) from None
    except RecursionError:
        raise UserError("invalid JSON (nested too deeply)", file=file) from None
    except ValueError:  # Python's limit on the digits of an integer
        raise UserError(f"invalid JSON ({_LONG_INT})", file=file) from None


class _Checker:
    """One pass over the composed node graph, aliases followed: string keys, each once per
    mapping; depth and size after alias expansion; no alias inside its own anchor."""

    def __init__(self, file: str | None):
        self.file = file
        self.done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) below it
        self.active: set[int] = set()

    def fail(self, message: str, path: tuple[str, ...] = ()) -> UserError:
        return UserError(message, file=self.file, field=".".join(path) or None)

    def walk(self, node: Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        """(values, levels) of ``node`` expanded; raises ``UserError``."""
        key = id(node)
        if key in self.active:
            raise self.fail(f"alias at line {node.start_mark.line + 1} refers to a mapping or "
                            "sequence that contains it", path)
        if key not in self.done:
            self.active.add(key)
            self.done[key] = self._measure(node, path, depth)
            self.active.discard(key)
        values, levels = self.done[key]
        if depth + levels > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                            path)
        return values, levels

    def _measure(self, node: Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        children: list[tuple[Node, tuple[str, ...]]] = []
        if isinstance(node, SequenceNode):
            children = [(child, (*path, str(i))) for i, child in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            children = self._mapping_children(node, path)
        values, levels = 1, 0
        for child, child_path in children:
            v, lv = self.walk(child, child_path, depth + 1)
            values, levels = values + v, max(levels, lv + 1)
            if values > MAX_NODES:
                raise self.fail(f"more than {MAX_NODES:,} values once aliases are expanded",
                                path)
        return values, levels

    def _mapping_children(self, node: MappingNode, path: tuple[str, ...]
                          ) -> list[tuple[Node, tuple[str, ...]]]:
        seen: dict[str, int] = {}
        out: list[tuple[Node, tuple[str, ...]]] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:  # "<<: *base": its keys may be overridden here
                out.append((value_node, path))
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                shown = key_node.value if isinstance(key_node, ScalarNode) else "[...]"
                raise self.fail(f"key {shown} at line {line} is not a string (quote it)", path)
            name = key_node.value
            if name in seen:
                raise self.fail(f"duplicate key at line {line} (first at line {seen[name]})",
                                (*path, name))
            seen[name] = line
            out.append((value_node, (*path, name)))
        return out
