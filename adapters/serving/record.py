"""``serve --record DIR``: the served traffic written as it happens, in the folder format that
``sim.run.served`` reads back (``infer-os validate --trace DIR``).

``requests.csv`` (and ``prompts.jsonl`` with ``--record-text``) get one line per request as it
ends, flushed; at shutdown ``trace.csv`` is written from the completed ones, then ``serve.json``
(both atomically; ``serve.json`` last, as the completion marker).  A server killed without a
shutdown leaves its ``requests.csv`` and no marker.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from datetime import datetime, timezone
from pathlib import Path

from sim.engine.trace_sink import write_atomic
from sim.errors import UserError
from sim.run.served import MARKER, PROMPTS, REQUEST_COLUMNS, REQUESTS, TRACE, TRACE_COLUMNS


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


class Recorder:
    """Contract: ``request`` from the engine thread, ``close`` once at shutdown."""

    def __init__(self, folder: Path, record_text: bool, meta: dict):
        self.folder, self.meta = folder, meta
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if (folder / MARKER).exists():
                (folder / MARKER).unlink()  # the folder is being recorded again
            self._requests = (folder / REQUESTS).open("w", newline="", encoding="utf-8")
            self._prompts = (folder / PROMPTS).open("w", encoding="utf-8") if record_text \
                else None
        except OSError as err:
            raise UserError(f"cannot write the recording ({err.strerror})", file=str(folder),
                            field="--record") from None
        self._csv = csv.writer(self._requests)
        self._csv.writerow(REQUEST_COLUMNS)
        self._requests.flush()
        self._trace: list[tuple[float, int, int, int]] = []
        self._lock = threading.Lock()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def request(self, job, row: dict) -> None:
        ttft = job.first_token_at - job.received if job.first_token_at else None
        status = "completed" if row["completed"] else "failed"
        with self._lock:
            self._csv.writerow([job.ticket, _num(row["arrival_s"]), _num(row["admitted_s"]),
                                _num(row["first_token_s"]), _num(row["finish_s"]),
                                len(job.prompt_ids), len(job.kept), job.max_tokens, status,
                                job.finish_reason or "", _num(ttft),
                                _num(job.ended_at - job.received), row["reason"] or ""])
            self._requests.flush()
            if row["completed"]:
                self._trace.append((row["arrival_s"], job.ticket, len(job.prompt_ids),
                                    len(job.kept)))
            if self._prompts is not None:
                self._prompts.write(json.dumps({"id": job.ticket, "prompt": job.text_prompt},
                                               ensure_ascii=False) + "\n")
                self._prompts.flush()

    def close(self, engine_counters: dict) -> None:
        with self._lock:
            self._requests.close()
            if self._prompts is not None:
                self._prompts.close()
            rows = sorted(self._trace)
        lines = [",".join(TRACE_COLUMNS)] + [f"{a:.6f},{p},{o}" for a, _, p, o in rows]
        write_atomic(self.folder / TRACE, "\n".join(lines) + "\n", "--record")
        doc = {**self.meta, "started_at": self.started_at,
               "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "num_completed": len(rows), "engine": engine_counters}
        write_atomic(self.folder / MARKER, json.dumps(doc, indent=2) + "\n", "--record")


def engine_counters(session) -> dict:
    """What ``sim.run.served.measured_run`` reads back: the engine's state over the whole run."""
    st, sig, stats = session.engine.state, session.planner.signals, session.pool.stats
    rep = session.raw.report()
    return {"num_steps": dict(st.num_steps), "batch_tokens_sum": dict(st.batch_tokens_sum),
            "batch_size_max": int(st.batch_size_max), "device_busy_s": dict(st.device_busy_s),
            "kv_peak_bytes": int(st.kv_peak_bytes),
            "kv_fp16_equiv_peak_bytes": int(st.kv_fp16_equiv_peak_bytes),
            "kv_bytes_by_precision_at_peak": dict(st.kv_bytes_by_precision_at_peak),
            "alloc_s": float(st.alloc_s), "steps_s": float(rep.steps_s),
            "buffers": {"num_allocs": stats.num_allocs, "alloc_bytes": stats.alloc_bytes,
                        "num_reuses": stats.num_reuses, "copy_bytes": stats.copy_bytes,
                        "efficiency_frac": stats.efficiency_frac},
            "speculation": {"num_proposed": int(sig.num_proposed),
                            "num_accepted": int(sig.num_accepted),
                            "draft_accepted": rep.draft_accepted,
                            "draft_rejections": rep.draft_rejections,
                            "draft_empty": rep.draft_empty}}
