"""Helpers of the hostile-input tests (issue 15): a minimal valid scenario as YAML text, and the
lines of the ``UserError`` a call raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.errors import UserError


def refused(call, *args) -> list[str]:
    """The lines of the ``UserError`` that ``call(*args)`` raises."""
    with pytest.raises(UserError) as info:
        call(*args)
    return list(info.value.lines)


def scenario_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


BASE_YAML = """\
name: t
model: {spec: gpt2}
hardware: h200
workload: {num_requests: 2}
engine: {max_batch: 2}
policies:
  tiering: {kind: fp16}
  buffers: {kind: exact}
  speculation: {kind: "off"}
  scheduling: {kind: single, device: gpu}
"""


TRACE_HEADER = "arrival_s,prompt_tokens,output_tokens\n"
