"""The benchmark scripts still import: every name they take from infer-os exists (imports inside
functions too, which ``--help`` would not reach), and each answers ``--help``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

OURS = ("sim", "adapters", "policies", "scenarios")
SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent is a module, not a package
        return False


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_name_a_benchmark_imports_from_us_exists(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in OURS:
            try:
                module = importlib.import_module(node.module)
            except ImportError as err:  # an optional extra (torch, onnx) is not ours to judge
                if err.name and err.name.split(".")[0] in OURS:
                    missing.append(f"line {node.lineno}: {node.module}")
                continue
            missing += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name)
                        and not _is_submodule(f"{node.module}.{a.name}")]
    assert not missing, f"{script.name} imports names that do not exist: {missing}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_answers_help(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
