"""Fixtures shared by the simulator's tests: a minimal valid scenario document and a writer that
saves one as ``scenario.yaml``.

Both are session-scoped and return functions, so Hypothesis ``@given`` tests may use them too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


def _base_scenario(**extra) -> dict:
    """A valid scenario (gpt2 on the h200 profile, 4 requests, every policy the plainest one);
    ``extra`` adds or replaces top-level fields."""
    return {
        "name": "config-test",
        "model": {"spec": "gpt2"},
        "hardware": "h200",
        "workload": {"num_requests": 4},
        "engine": {"max_batch": 2},
        "policies": {"tiering": {"kind": "fp16"}, "buffers": {"kind": "exact"},
                     "speculation": {"kind": "off"},
                     "scheduling": {"kind": "single", "device": "gpu"}},
        **extra,
    }


def _scenario_file(tmp_path: Path, data: dict) -> Path:
    """``data`` saved as ``tmp_path / "scenario.yaml"`` (keys in the given order)."""
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def base_scenario() -> Callable[..., dict]:
    """``base_scenario(**extra) -> dict``: a minimal valid scenario document."""
    return _base_scenario


@pytest.fixture(scope="session")
def scenario_file() -> Callable[[Path, dict], Path]:
    """``scenario_file(tmp_path, data) -> tmp_path / "scenario.yaml"``."""
    return _scenario_file
