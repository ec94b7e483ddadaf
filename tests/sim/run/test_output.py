"""What ``--out`` writes: the timeline streamed to disk during a run (``TraceSink``) is byte for
byte the files written from a timeline held in memory, and both are the format written before
streaming existed (a reference writer below); every file is written whole or not at all; the
folder is checked before anything runs."""

from __future__ import annotations

import csv
import errno
import json
from types import SimpleNamespace

import numpy as np
import pytest

import scenarios
from sim.config.scenario import resolve_runs
from sim.engine import trace_sink
from sim.engine.state import RunState
from sim.engine.trace_sink import PartFile, TraceSink
from sim.errors import UserError
from sim.run import output
from sim.run.runner import run_scenario

QUICKSTART = scenarios.locate("quickstart")
# quickstart on the APU (three devices on the timeline), some prompts beyond the model's context
# (failed requests: an instant event each)
SETS = ["hardware=ryzen-ai-9-hx-370",
        "policies.scheduling={kind: static, prefill: igpu, decode_attention: igpu, "
        "decode_ffn: npu}",
        "workload.prompt_tokens={kind: uniform, low: 64, high: 12000}"]


def reference_files(run) -> tuple[str, str]:
    """The trace JSON and KV CSV as ``sim.run.output`` wrote them before streaming (verbatim
    logic), from a run recorded in memory."""
    s = run.state
    events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
              {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "requests"}}]
    tids: dict[str, int] = {}
    for device, op, start, dur, ids in s.trace:
        if device not in tids:
            tids[device] = len(tids)
            events.append({"ph": "M", "pid": 1, "tid": tids[device], "name": "thread_name",
                           "args": {"name": device}})
        events.append({"ph": "X", "pid": 1, "tid": tids[device], "name": op,
                       "ts": round(start * 1e6, 3), "dur": round(dur * 1e6, 3),
                       "args": {"batch": len(ids)}})
    for rid in range(len(run.requests)):
        spans = (("queued", s.arrival_s[rid], s.admitted_s[rid]),
                 ("prefill", s.admitted_s[rid], s.first_token_s[rid]),
                 ("decode", s.first_token_s[rid], s.finish_s[rid]))
        for name, a, b in spans:
            if np.isfinite(a) and np.isfinite(b) and b >= a:
                events.append({"ph": "X", "pid": 2, "tid": rid, "name": name,
                               "ts": round(a * 1e6, 3), "dur": round((b - a) * 1e6, 3)})
        if rid in s.fail_reason:
            events.append({"ph": "i", "pid": 2, "tid": rid, "name": "failed", "s": "t",
                           "ts": round(s.finish_s[rid] * 1e6, 3),
                           "args": {"reason": s.fail_reason[rid]}})
    trace = json.dumps({"traceEvents": events, "displayTimeUnit": "ms"})
    names = list(dict.fromkeys(k for _, by in s.kv_timeline for k in by))
    lines = [",".join(["time_s", *names])]
    lines += [",".join([f"{t:.9g}", *(str(int(by.get(k, 0))) for k in names)])
              for t, by in s.kv_timeline]
    return trace, "".join(line + "\r\n" for line in lines)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each quickstart variant run twice: recorded in memory (and written from it) and streamed
    to disk by a ``TraceSink`` (chunks of 64 ops and points, so that many are written)."""
    mem_dir, sink_dir = (tmp_path_factory.mktemp(n) for n in ("memory", "sink"))
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace_sink, "CHUNK_ITEMS", 64)
        for variant, scn in resolve_runs(QUICKSTART, SETS):
            in_memory = run_scenario(scn, variant, "roofline", QUICKSTART.parent,
                                     record_trace=True)
            sink = output.trace_sink(sink_dir, variant, "roofline")
            streamed = run_scenario(scn, variant, "roofline", QUICKSTART.parent,
                                    record_trace=sink)
            runs.append((in_memory, streamed))
        output.write_run_files(mem_dir, [m for m, _ in runs])
        output.write_run_files(sink_dir, [s for _, s in runs])
    return mem_dir, sink_dir, runs


def test_the_streamed_timeline_is_byte_for_byte_the_format_written_before(written):
    mem_dir, sink_dir, runs = written
    assert len(runs) == 2
    for in_memory, streamed in runs:
        stem = output.run_stem(in_memory)
        trace, kv = reference_files(in_memory)
        assert (mem_dir / f"trace.{stem}.json").read_text() == trace
        assert (sink_dir / f"trace.{stem}.json").read_text() == trace
        assert (mem_dir / f"kv.{stem}.csv").read_bytes() == kv.encode()
        assert (sink_dir / f"kv.{stem}.csv").read_bytes() == kv.encode()
        for name in (f"requests.{stem}.csv", f"trace.{stem}.json", f"kv.{stem}.csv"):
            assert (mem_dir / name).read_bytes() == (sink_dir / name).read_bytes(), name
        # what the comparison covers: several devices, failed requests, many KV points
        events = json.loads(trace)["traceEvents"]
        assert len({e["tid"] for e in events if e.get("pid") == 1 and "tid" in e}) >= 2
        assert any(e["name"] == "failed" for e in events)
        assert any(e["name"] == "decode" and e["pid"] == 2 for e in events)
        assert len(in_memory.state.kv_timeline) > 3 * 64
        # streamed: nothing of the timeline held in memory
        assert streamed.state.trace == [] and streamed.state.kv_timeline == []
    assert sorted(p.name for p in sink_dir.iterdir()) == sorted(p.name for p in mem_dir.iterdir())


def test_kv_rows_written_before_a_precision_first_appears_get_a_zero_for_it(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(trace_sink, "CHUNK_ITEMS", 2)
    points = [(0.5, {"fp16": 10}), (0.5, {"fp16": 11, "gone": 1}),  # the same instant
              (1.0, {"fp16": 12}), (1.5, {"fp16": 5, "int8": 3}),
              (2.0, {"int8": 4, "fp16": 1}), (2.5, {"offloaded": 7})]
    sink = TraceSink(tmp_path, "v.m")
    for t, by in points:
        sink.kv_point(t, by)
    sink.commit(RunState(0, False))
    ref = tmp_path / "ref.csv"  # the in-memory timeline: the second point replaced the first
    output.write_kv_csv(SimpleNamespace(state=SimpleNamespace(kv_timeline=points[1:])), ref)
    assert (tmp_path / "kv.v.m.csv").read_bytes() == ref.read_bytes()
    assert ref.read_bytes() == (b"time_s,fp16,gone,int8,offloaded\r\n0.5,11,1,0,0\r\n"
                                b"1,12,0,0,0\r\n1.5,5,0,3,0\r\n2,1,0,4,0\r\n2.5,0,0,0,7\r\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kv.v.m.csv", "ref.csv",
                                                          "trace.v.m.json"]


def test_a_discarded_sink_leaves_nothing(tmp_path):
    sink = TraceSink(tmp_path, "v.m")
    sink.device_op("gpu", "decode", 0.0, 1.0, 4)
    sink.kv_point(0.0, {"fp16": 1})
    assert len(list(tmp_path.iterdir())) == 2  # the two temporary files
    sink.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_what_the_file_held_and_names_it(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def raising_write(self, text):
        raise trace_sink.write_failed(self.path, OSError(errno.ENOSPC,
                                                         "No space left on device"))

    monkeypatch.setattr(PartFile, "write", raising_write)
    with pytest.raises(UserError) as err:
        trace_sink.write_atomic(target, "new")
    assert str(err.value) == (f"{target}: --out: cannot write it (No space left on device)")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_full_disk_mid_run_ends_with_one_line_and_no_marker(tmp_path, monkeypatch, capsys):
    from sim.cli import main

    real_write = PartFile.write
    calls = {"n": 0}

    def write(self, text):
        calls["n"] += 1
        if calls["n"] > 20:  # the disk fills while the timeline is streamed
            raise trace_sink.write_failed(self.path, OSError(errno.ENOSPC,
                                                             "No space left on device"))
        real_write(self, text)

    monkeypatch.setattr(PartFile, "write", write)
    monkeypatch.setattr(trace_sink, "CHUNK_ITEMS", 16)
    out = tmp_path / "out"
    assert main(["simulate", str(QUICKSTART), "--json", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"infer-os: error: {out}/")
    assert lines[0].endswith(": --out: cannot write it (No space left on device)")
    assert list(out.iterdir()) == []  # no results.json, no temporary file, nothing truncated


def test_out_is_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    from sim.cli import app, main

    monkeypatch.setattr(app, "run_scenario", lambda *a, **k: pytest.fail("it ran"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["simulate", "quickstart", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"infer-os: error: --out: cannot write to {blocker / 'out'} "
                   "(Not a directory)\n")


def test_a_rerun_into_a_folder_unmarks_it_until_it_is_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"runs": []}')
    (out / "validation.json").write_text("{}")
    output.prepare_out(out, "results.json")
    assert sorted(p.name for p in out.iterdir()) == ["validation.json"]


def test_a_complete_folder_lists_its_runs_and_an_interrupted_one_says_how_many(tmp_path):
    ((variant, scn),) = resolve_runs(QUICKSTART, [], ["fp16-kv"])
    run = run_scenario(scn, variant, "roofline", QUICKSTART.parent)
    doc = output.incomplete(output.document("quickstart", "sim", [run]), 1, 4)
    output.write_out(tmp_path, doc, [run])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["incomplete"] == {"runs_written": 1, "runs_planned": 4,
                                     "reason": "interrupted"}
    assert [r["variant"] for r in written["runs"]] == ["fp16-kv"]
    with (tmp_path / "requests.fp16-kv.roofline.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == scn.workload.num_requests
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kv.fp16-kv.roofline.csv", "requests.fp16-kv.roofline.csv", "results.json",
        "trace.fp16-kv.roofline.json"]
