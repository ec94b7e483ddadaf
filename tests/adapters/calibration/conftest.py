"""The tiny model and its short torch calibration, shared by the calibration tests of this
package (a module may define its own ``tiny``)."""

from __future__ import annotations

import contextlib
import io

import pytest


@pytest.fixture(scope="package")
def tiny(tmp_path_factory, write_llama):
    """A folder holding ``model``: a random two-layer llama."""
    root = tmp_path_factory.mktemp("calib")
    write_llama(root / "model", 0)
    return root


@pytest.fixture(scope="package")
def tiny_profile(tiny):
    """A short calibration of the tiny model (torch, one thread, 4 s of timing)."""
    pytest.importorskip("torch")
    from sim.cli import main

    profile = tiny / "profile.yaml"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", "--backend", "torch", "--model", str(tiny / "model"),
                     "--threads", "1", "--block-tokens", "16", "--kv-quant-group", "16",
                     "--budget-s", "4", "--out", str(profile)]) == 0
    return profile
