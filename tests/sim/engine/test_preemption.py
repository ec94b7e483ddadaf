"""Preemption (``engine.preemption``): admission reserves the prompt plus one block, requests grow
block by block, and the most recently admitted running request is preempted when a step's growth
does not fit (recompute: its KV freed and prefilled again; swap: its blocks moved to the host tier
and back).  On the toy profile of conftest.py a 16-token block is 4096 bytes."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.config.scenario import resolve_runs
from sim.engine.engine import Engine
from sim.engine.planner import Planner
from sim.engine.preemption import Preemptor
from sim.engine.state import COMPLETED, FAILED
from sim.errors import UserError
from sim.run.runner import run_scenario

BLOCK = 4096
# 12 requests at t = 0, 16-token prompts, 100 to 180 output tokens (8 to 13 blocks each)
ROWS = [(0, 16, 100 + 8 * i) for i in range(12)]
KV_LIMITED = {"max_batch": 8, "kv_budget_bytes": 24 * BLOCK, "host_budget_bytes": 1e9}
ROOMY = {"max_batch": 8, "kv_budget_bytes": 1000 * BLOCK, "host_budget_bytes": 1e9}


@pytest.fixture
def checked(monkeypatch):
    """Check the KV store's books after every step and every preemption pass; records the
    prefill tokens planned (``checked["prefill_tokens"]``)."""
    seen = {"prefill_tokens": 0, "checks": 0}

    def check(store):
        store.check_integrity()  # includes used + reserved <= the device budget, host <= its own
        assert store.device_used_bytes + store.reserved_bytes <= store.device_budget_bytes
        seen["checks"] += 1

    advance, make_room, plan = Engine._advance, Preemptor.make_room, Planner.prefill_plan

    def _advance(self, *args, **kwargs):
        advance(self, *args, **kwargs)
        check(self.store)

    def _make_room(self):
        make_room(self)
        check(self.engine.store)

    def _prefill_plan(self, *args, **kwargs):
        p = plan(self, *args, **kwargs)
        seen["prefill_tokens"] += p.num_tokens
        return p

    monkeypatch.setattr(Engine, "_advance", _advance)
    monkeypatch.setattr(Preemptor, "make_room", _make_room)
    monkeypatch.setattr(Planner, "prefill_plan", _prefill_plan)
    return seen


def run(tmp_path, toy_scenario, toy_run, mode, engine, rows=ROWS):
    path = toy_scenario(tmp_path, rows=rows, engine={**engine, "preemption": mode})
    return toy_run(path)


def assert_all_tokens(out, rows=ROWS):
    s = out.state
    outputs = np.array([o for _, _, o in rows])
    assert (s.status == COMPLETED).all(), s.fail_reason
    assert (s.generated == outputs).all()
    assert out.metrics["output_tokens"] == outputs.sum()
    assert (s.first_token_s <= s.finish_s).all() and (s.admitted_s <= s.first_token_s).all()


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_kv_limited_run_preempts_and_completes_every_request(tmp_path, toy_scenario, toy_run,
                                                             checked, mode):
    out = run(tmp_path, toy_scenario, toy_run, mode, KV_LIMITED)
    assert_all_tokens(out)
    assert checked["checks"] > 0
    m = out.metrics
    assert m["num_preemptions"] > 0 and m["preemption"]["mode"] == mode
    assert m["preemption"]["num_preemptions"] == m["num_preemptions"]
    assert m["kv_peak_bytes"] <= KV_LIMITED["kv_budget_bytes"]
    assert len(out.store.request_ids()) == 0 and out.store.host_used_bytes == 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_roomy_run_never_preempts(tmp_path, toy_scenario, toy_run, checked, mode):
    out = run(tmp_path, toy_scenario, toy_run, mode, ROOMY)
    assert_all_tokens(out)
    assert out.metrics["num_preemptions"] == 0
    assert out.metrics["preemption"]["recompute_tokens"] == 0


def test_preemption_batches_more_than_reserving_everything(tmp_path, toy_scenario, toy_run,
                                                           checked):
    none = run(tmp_path, toy_scenario, toy_run, "none", KV_LIMITED)
    recompute = run(tmp_path, toy_scenario, toy_run, "recompute", KV_LIMITED)
    assert_all_tokens(none)
    assert "num_preemptions" not in none.metrics and "preemption" not in none.metrics
    assert recompute.metrics["engine"]["max_batch"] > none.metrics["engine"]["max_batch"]


def test_recompute_prefills_the_generated_tokens_again(tmp_path, toy_scenario, toy_run, checked):
    none = run(tmp_path, toy_scenario, toy_run, "none", KV_LIMITED)
    base = checked["prefill_tokens"]
    assert base == sum(p for _, p, _ in ROWS)  # each prompt once
    out = run(tmp_path, toy_scenario, toy_run, "recompute", KV_LIMITED)
    p = out.metrics["preemption"]
    assert p["num_recomputed"] == out.metrics["num_preemptions"] > 0 and p["num_swapped"] == 0
    assert checked["prefill_tokens"] - base == sum(pr for _, pr, _ in ROWS) + p["recompute_tokens"]
    assert p["recompute_tokens"] > p["num_recomputed"] * 16  # prompts plus generated tokens
    assert none.metrics["num_completed"] == out.metrics["num_completed"] == len(ROWS)


def test_swap_moves_blocks_to_the_host_and_back(tmp_path, toy_scenario, toy_run, checked):
    out = run(tmp_path, toy_scenario, toy_run, "swap", KV_LIMITED)
    p = out.metrics["preemption"]
    assert p["num_swapped"] == out.metrics["num_preemptions"] > 0 and p["num_recomputed"] == 0
    assert p["recompute_tokens"] == 0
    assert p["swap_out_bytes"] == p["swap_in_bytes"] > 0
    assert p["swap_out_bytes"] % BLOCK == 0
    assert checked["prefill_tokens"] == sum(pr for _, pr, _ in ROWS)  # nothing prefilled again


def test_swap_falls_back_to_recompute_when_the_host_tier_is_full(tmp_path, toy_scenario,
                                                                 toy_run, checked):
    out = run(tmp_path, toy_scenario, toy_run, "swap", {**KV_LIMITED, "host_budget_bytes": 0})
    assert_all_tokens(out)
    p = out.metrics["preemption"]
    assert p["num_swapped"] == 0 and p["num_recomputed"] == out.metrics["num_preemptions"] > 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_a_preempted_request_keeps_its_first_token_time_and_its_tokens(
        tmp_path, toy_scenario, toy_run, monkeypatch, mode):
    at_preemption: dict[int, list] = {}
    preempt = Preemptor.preempt

    def _preempt(self, rid):
        s = self.engine.state
        at_preemption.setdefault(rid, []).append(
            (float(s.first_token_s[rid]), float(s.admitted_s[rid]), int(s.generated[rid])))
        preempt(self, rid)

    monkeypatch.setattr(Preemptor, "preempt", _preempt)
    out = run(tmp_path, toy_scenario, toy_run, mode, KV_LIMITED)
    assert at_preemption
    s = out.state
    for rid, seen in at_preemption.items():
        assert all(ft == s.first_token_s[rid] and adm == s.admitted_s[rid] for ft, adm, _ in seen)
        generated = [g for *_, g in seen]
        assert generated == sorted(generated) and 0 < generated[0]  # never taken back
        assert s.generated[rid] == ROWS[rid][2]


def test_none_is_unchanged_by_the_new_key(tmp_path, toy_scenario, toy_run):
    path = toy_scenario(tmp_path, rows=ROWS, engine=KV_LIMITED)
    default = toy_run(path)
    explicit = toy_run(path, ["engine.preemption=none"])
    assert default.metrics == explicit.metrics
    assert "num_preemptions" not in default.metrics


def test_every_request_ends_under_faults_and_speculation_like_shapes(tmp_path, toy_scenario,
                                                                     toy_run, checked):
    # ragged prompts that are not block multiples, max_batch the binding limit
    rows = [(0.01 * i, 5 + 7 * i, 40 + 13 * i) for i in range(16)]
    for mode in ("recompute", "swap"):
        out = run(tmp_path, toy_scenario, toy_run, mode,
                  {"max_batch": 4, "kv_budget_bytes": 16 * BLOCK, "host_budget_bytes": 8 * BLOCK},
                  rows=rows)
        s = out.state
        ended = (s.status == COMPLETED) | (s.status == FAILED)
        assert ended.all()
        done = s.status == COMPLETED
        assert (s.generated[done] == np.array([o for *_, o in rows])[done]).all()
        assert done.sum() + (s.status == FAILED).sum() == len(rows)


def test_real_backends_refuse_preemption(tmp_path, toy_scenario):
    path = toy_scenario(tmp_path, rows=ROWS, engine={"preemption": "recompute"})
    ((variant, scn),) = resolve_runs(path, [])
    with pytest.raises(UserError) as err:
        run_scenario(scn, variant, None, path.parent, backend="torch")
    assert err.value.field == "engine.preemption"
    assert "simulator-only" in str(err.value)


def with_faults(path, events):
    doc = yaml.safe_load(path.read_text())
    doc["faults"] = {"events": events}
    path.write_text(yaml.safe_dump(doc))
    return path


HYBRID = {"kind": "amd-hybrid", "gpu": "gpu", "npu": "cpu"}  # prefill on cpu, decode on gpu


@pytest.mark.parametrize("mode", ["recompute", "swap"])
@pytest.mark.parametrize("events", [
    # shrinks while decode steps are in flight: running requests are preempted, not failed
    {"squeeze": {"kind": "kv-shrink", "budget_frac": 0.5, "start_s": 1.03}},
    {"squeeze": {"kind": "kv-shrink", "budget_frac": 0.6, "start_s": 0.5, "end_s": 3.0}},
    {"dies": {"kind": "device-failure", "device": "cpu", "start_s": 0.01, "end_s": 2.0}},
    {"oom": {"kind": "alloc-cap", "cap_bytes": 20 * BLOCK, "start_s": 1.0, "end_s": 2.0}},
    {"crash": {"kind": "step-error", "at_step": 7, "phase": "decode"}},
])
def test_faults_with_preemption_end_every_request_and_balance_the_books(
        tmp_path, toy_scenario, toy_run, checked, mode, events):
    path = toy_scenario(tmp_path, rows=ROWS, scheduling=HYBRID,
                        engine={**KV_LIMITED, "preemption": mode})
    out = toy_run(with_faults(path, events))
    s = out.state
    assert ((s.status == COMPLETED) | (s.status == FAILED)).all()
    assert set(s.fail_reason) == set(np.flatnonzero(s.status == FAILED).tolist())
    done = s.status == COMPLETED
    assert (s.generated[done] == np.array([o for *_, o in ROWS])[done]).all()
    out.store.check_integrity()
    assert out.store.request_ids() == [] and out.store.host_used_bytes == 0
    if "squeeze" in events:  # the shrink preempts: only a request that can never fit fails
        assert all("can never fit" in why for why in s.fail_reason.values())
        assert done.sum() >= 10
