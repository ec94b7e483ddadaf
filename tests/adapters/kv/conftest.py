"""The module-scoped ``model`` fixture: the tiny model of ``tiny_model`` (skipped without torch)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torch")
    from tests.adapters.kv.tiny_model import tiny_model

    return tiny_model()
