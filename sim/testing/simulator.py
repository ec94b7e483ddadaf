"""A system-level property: a policy driven through the simulator on generated workloads keeps
the engine's invariants."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.testing.conformance import family_of

# -- system-level property -------------------------------------------------------------------
SYSTEM_SCENARIO = Path(__file__).parent / "scenario.yaml"


@st.composite
def workloads(draw, max_requests: int = 12) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_tokens, output_tokens) rows."""
    n = draw(st.integers(1, max_requests))
    return [(draw(st.floats(0.0, 2.0)), draw(st.integers(1, 600)), draw(st.integers(1, 200)))
            for _ in range(n)]


def check_in_simulator(policy, family: str | None = None, max_examples: int = 25,
                       scenario: Path = SYSTEM_SCENARIO, tmp_dir: Path | None = None) -> None:
    """Drive ``policy`` (the other families at their baselines) through the simulator on
    generated workloads, KV budgets and batch limits; assert that no request is lost (each ends
    completed with all its tokens, or failed with a reason), the KV budget is never exceeded and
    the store's books balance."""
    import tempfile

    from sim.config.policy_check import check_instance
    from sim.config.scenario import resolve_runs
    from sim.run.runner import run_scenario

    family = family or family_of(policy)
    check_instance(policy, family)  # what a scenario would refuse, refused here too
    base = Path(tmp_dir or tempfile.mkdtemp(prefix="infer-os-kit-"))

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(workloads(), st.integers(8, 64), st.integers(1, 8))
    def engine_invariants_hold(rows, budget_blocks, max_batch):
        trace = base / "trace.csv"
        trace.write_text("arrival_s,prompt_tokens,output_tokens\n" +
                         "".join(f"{a},{p},{o}\n" for a, p, o in rows))
        budget = budget_blocks * 16 * 36 * 1024  # blocks of 16 tokens of a 36 KiB/token model
        sets = [f"workload.arrival={{kind: trace, path: {trace}}}",
                f"engine.kv_budget_bytes={budget}", f"engine.max_batch={max_batch}"]
        ((variant, scn),) = resolve_runs(scenario, sets)
        policies = scn.policies.model_copy(update={family: policy})
        scn = scn.model_copy(update={"policies": policies})
        out = run_scenario(scn, variant, "roofline", scenario.parent)
        _assert_invariants(out, rows)

    engine_invariants_hold()


def _assert_invariants(out, rows) -> None:
    from sim.engine.state import COMPLETED, FAILED

    state, store = out.state, out.store
    n = len(rows)
    assert out.metrics["num_completed"] + out.metrics["num_failed"] == n, "a request was lost"
    for rid in range(n):
        status = int(state.status[rid])
        assert status in (COMPLETED, FAILED), f"request {rid} never ended"
        if status == COMPLETED:
            want = int(out.requests.output_tokens[rid])
            assert state.generated[rid] == want, (
                f"request {rid}: {state.generated[rid]} tokens generated, {want} asked")
        else:
            assert state.fail_reason.get(rid), f"request {rid} failed without a reason"
    assert state.kv_peak_bytes <= store.device_budget_bytes, "the KV budget was exceeded"
    assert store.request_ids() == [], "KV blocks left behind after every request ended"
    store.check_integrity()
