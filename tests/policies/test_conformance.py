"""Every registered policy passes the public kit: conformance on generated observations, and the
engine's invariants when it drives the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import Precision, SinglePlacement, StaticPlacement
from sim.config.policy_registry import FAMILIES
from sim.engine.kv_store import block_bytes
from sim.testing import check_conformance, check_in_simulator

CONFIGURED = {SinglePlacement: SinglePlacement("gpu"),
              StaticPlacement: StaticPlacement("igpu", "igpu", "npu")}
POLICIES = [(family, CONFIGURED.get(cls) or cls()) for family, classes in FAMILIES.items()
            for cls in classes]


@pytest.mark.parametrize(("family", "policy"), POLICIES, ids=lambda x: getattr(x, "kind", x))
def test_every_policy_conforms(family, policy):
    check_conformance(policy, family=family, max_examples=60)


@pytest.mark.parametrize(("family", "policy"),
                         [(f, p) for f, p in POLICIES if f != "scheduling"],
                         ids=lambda x: getattr(x, "kind", x))
def test_every_policy_keeps_the_engine_invariants(family, policy):
    check_in_simulator(policy, family=family, max_examples=6)


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.integers(4, 4096), st.integers(1, 64), st.sampled_from([8, 16, 32, 64, 128]))
def test_quantized_kv_bytes_never_exceed_fp16_bytes(values_per_token, block_tokens, group):
    # K and V of >= 1 layer, head and 2-dim head: >= 4 values per token (1 value per block would
    # pay a 4-byte scale + zero point for 2 bytes of FP16); groups of >= 8 values, as the config
    # enforces (a group of 4 pays 1 byte of scales per value)
    sizes = block_bytes(values_per_token, block_tokens, group)
    assert sizes[Precision.INT2] <= sizes[Precision.INT4] <= sizes[Precision.INT8] \
        <= sizes[Precision.FP16]
