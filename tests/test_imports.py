"""The import direction (policies -> standard library only; sim never imports adapters) and the
bundled hardware profiles (each loads, each figure cited)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.errors import UserError
from sim.hardware import PROFILE_DIR, bundled_profiles, load_profile

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules a file imports (a relative import counts as its package),
    including ``importlib.import_module("x...")`` / ``__import__("x...")`` with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.parent.name
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_the_import_walker_sees_imports():
    # guards the two tests below against an empty walk
    assert {"dataclasses", "typing", "policies", "__future__"} <= imported_modules(
        ROOT / "policies" / "tiering.py")
    assert {"numpy", "policies"} <= imported_modules(ROOT / "sim" / "kv_store.py")


def test_the_import_walker_sees_relative_and_dynamic_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("from . import x\nimport importlib\n"
                              "importlib.import_module('adapters.torch')\n__import__('yaml')\n")
    assert imported_modules(pkg / "m.py") == {"pkg", "importlib", "adapters", "yaml"}


def test_policies_import_only_the_standard_library():
    files = sorted((ROOT / "policies").glob("*.py"))
    assert len(files) >= 5
    bad = {f"{f.name}: {m}" for f in files for m in imported_modules(f)
           if m not in sys.stdlib_module_names and m != "policies"}
    assert not bad


def test_importing_policies_loads_no_third_party_or_engine_module():
    code = ("import sys, policies\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'simpy', 'pydantic', 'torch', 'sim', 'adapters', 'yaml')))\n"
            "print('policies' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_sim_never_imports_adapters():
    files = sorted((ROOT / "sim").rglob("*.py"))
    assert len(files) >= 10
    bad = [str(f.relative_to(ROOT)) for f in files if "adapters" in imported_modules(f)]
    assert not bad


# -- hardware profiles ---------------------------------------------------------------------------
def test_the_three_bundled_profiles_are_found():
    assert {"cpu-2core-avx512", "h200", "ryzen-ai-9-hx-370"} <= set(bundled_profiles())


@pytest.mark.parametrize("name", bundled_profiles())
def test_bundled_profile_loads_and_cites_every_figure(name):
    hw = load_profile(name)
    assert hw.name == name
    assert hw.devices and hw.memories
    for obj in (*hw.memories, *hw.devices):
        figures = {k for k, v in obj.model_dump().items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert figures, obj.name
        uncited = {k for k in figures if not obj.sources.get(k, "").strip()}
        assert not uncited, (obj.name, uncited)
    assert load_profile(str(PROFILE_DIR / f"{name}.yaml")) == hw  # by path, too


def test_unknown_profile_name_is_a_user_error():
    with pytest.raises(UserError, match="h200"):  # lists the bundled ones
        load_profile("no-such-profile")


@pytest.mark.parametrize(
    ("where", "figure", "field"),
    [
        (("devices", 0), "peak_flops_per_s", "devices.0"),
        (("memories", 1), "efficiency", "memories.1"),
    ],
)
def test_uncited_figure_is_rejected(tmp_path, where, figure, field):
    data = yaml.safe_load((PROFILE_DIR / "h200.yaml").read_text())
    obj = data[where[0]][where[1]]
    assert figure in obj and figure in obj["sources"]
    del obj["sources"][figure]
    path = tmp_path / "uncited.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        load_profile(str(path))
    assert err.value.file == str(path)
    assert err.value.field == field
    assert repr(figure) in err.value.message
    assert str(path) in str(err.value) and field in str(err.value)
