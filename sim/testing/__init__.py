"""A kit for property-testing inference policies, ours and users', with Hypothesis.

- Strategies for every observation type (``tiering_observations()``, ``buffer_observations()``,
  ``spec_observations()``, ``scheduling_observations()``).
- ``check_conformance(policy)``: runs any policy of a family through generated observations and
  checks that its decisions are feasible, deterministic for equal observations, made without a
  clock, randomness or I/O, and (tiering) never raise precision when memory pressure rises.
  A violation raises ``AssertionError`` with Hypothesis's shrunk counterexample.
- ``check_in_simulator(policy)``: drives the policy through the simulator on generated workloads and
  checks the engine's invariants: no request lost, the KV budget never exceeded, tokens conserved.

It lives in ``sim`` because ``policies`` stays standard-library only; policies need not import it.
"""


from sim.testing.conformance import ImpureDecision, check_conformance, family_of, pure_call
from sim.testing.simulator import SYSTEM_SCENARIO, check_in_simulator, workloads
from sim.testing.strategies import (
    DEVICE_NAMES,
    FAMILY_OF_OBSERVATION,
    block_lists,
    buffer_observations,
    scheduling_observations,
    spec_observations,
    tiering_observations,
)

__all__ = ["DEVICE_NAMES", "FAMILY_OF_OBSERVATION", "SYSTEM_SCENARIO", "ImpureDecision",
           "block_lists", "buffer_observations", "check_conformance", "check_in_simulator",
           "family_of", "pure_call", "scheduling_observations", "spec_observations",
           "tiering_observations", "workloads"]
