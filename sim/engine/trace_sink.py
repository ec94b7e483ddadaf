"""A run's timeline written to disk as it happens (``--out``), so that memory stays flat however
long the run: the Chrome trace (``trace.{stem}.json``) and the KV timeline (``kv.{stem}.csv``),
byte for byte what ``sim.run.output`` writes from a timeline held in memory (both build their
events here).  Every file is written under a temporary name in its folder and renamed into place
once whole (``PartFile``): a folder never holds a truncated file under its final name."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sim.errors import UserError

if TYPE_CHECKING:
    from sim.engine.state import RunState

CHUNK_ITEMS = 4096  # device ops, KV points or requests converted and written at a time
HEAD_EVENTS = ({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "devices"}},
               {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "requests"}})
TRACE_TAIL = '], "displayTimeUnit": "ms"}'


def write_failed(path: Path, err: OSError, field: str = "--out") -> UserError:
    """The one-line error for a file (of ``--out``, by default) that could not be written."""
    return UserError(f"cannot write it ({err.strerror or err})", file=str(path), field=field)


class PartFile:
    """A text file written as ``.NAME.PID.part`` next to ``path`` and renamed to ``path`` by
    ``commit`` (after an fsync); ``discard`` removes it.  Write errors are ``UserError``s."""

    def __init__(self, path: Path, newline: str | None = None, field: str = "--out"):
        self.path, self.field = Path(path), field
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        try:
            self.file = self.tmp.open("w", newline=newline, encoding="utf-8")
        except OSError as err:
            raise write_failed(self.path, err, field) from None

    def write(self, text: str) -> None:
        try:
            self.file.write(text)
        except OSError as err:
            raise write_failed(self.path, err, self.field) from None

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.discard()
            raise write_failed(self.path, err, self.field) from None

    def discard(self) -> None:
        """Remove the temporary file (nothing once committed)."""
        try:
            self.file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str, field: str = "--out") -> None:
    """``path`` holds ``text`` whole, or keeps what it held."""
    part = PartFile(path, field=field)
    try:
        part.write(text)
        part.commit()
    finally:
        part.discard()


# -- Chrome trace events (one track per device, pid 1; one per request, pid 2; microseconds) ---

def device_events(ops: Iterable[tuple[str, str, float, float, int]],
                  tids: dict[str, int]) -> Iterator[dict]:
    """The events of device ops ``(device, op, start_s, duration_s, batch size)``, each device's
    name event before its first op (``tids``: device -> track, filled as devices appear)."""
    for device, op, start, dur, batch in ops:
        if device not in tids:
            tids[device] = len(tids)
            yield {"ph": "M", "pid": 1, "tid": tids[device], "name": "thread_name",
                   "args": {"name": device}}
        yield {"ph": "X", "pid": 1, "tid": tids[device], "name": op,
               "ts": round(start * 1e6, 3), "dur": round(dur * 1e6, 3), "args": {"batch": batch}}


def request_events(state: RunState, rids: Iterable[int]) -> Iterator[dict]:
    """Each request's queued, prefill and decode spans, and an instant where it failed."""
    s = state
    for rid in rids:
        spans = (("queued", s.arrival_s[rid], s.admitted_s[rid]),
                 ("prefill", s.admitted_s[rid], s.first_token_s[rid]),
                 ("decode", s.first_token_s[rid], s.finish_s[rid]))
        for name, a, b in spans:
            if np.isfinite(a) and np.isfinite(b) and b >= a:
                yield {"ph": "X", "pid": 2, "tid": rid, "name": name,
                       "ts": round(a * 1e6, 3), "dur": round((b - a) * 1e6, 3)}
        if rid in s.fail_reason:
            yield {"ph": "i", "pid": 2, "tid": rid, "name": "failed", "s": "t",
                   "ts": round(s.finish_s[rid] * 1e6, 3), "args": {"reason": s.fail_reason[rid]}}


# -- the KV timeline CSV ----------------------------------------------------------------------

def kv_rows(points: Iterable[tuple[float, dict[str, int]]],
            names: dict[str, None]) -> Iterator[list]:
    """CSV rows ``time_s, bytes per name`` of KV points; ``names`` (an ordered set) gains each
    point's precisions first, so a row has a column for every precision seen so far."""
    for t, by in points:
        names.update(dict.fromkeys(by))
        yield [f"{t:.9g}", *(int(by.get(k, 0)) for k in names)]


class TraceSink:
    """``record_trace`` of a run that streams its timeline into ``folder``: the engine's
    ``RunState`` calls ``device_op`` and ``kv_point`` as the run goes; ``commit(state)`` once it
    has ended writes the rest and renames both files into place; ``discard()`` drops them."""

    def __init__(self, folder: Path, stem: str):
        folder = Path(folder)
        self.trace_path, self.kv_path = folder / f"trace.{stem}.json", folder / f"kv.{stem}.csv"
        self._trace = PartFile(self.trace_path)
        self._kv_body = PartFile(self.kv_path.with_name(self.kv_path.name + ".body"),
                                 newline="")
        self._ops: list[tuple[str, str, float, float, int]] = []
        self._tids: dict[str, int] = {}
        self._points: list[tuple[float, dict[str, int]]] = []
        self._last_point: tuple[float, dict[str, int]] | None = None
        self._names: dict[str, None] = {}
        self._first_row_width: int | None = None  # columns of the first KV row written
        self._trace.write('{"traceEvents": [' + json.dumps(list(HEAD_EVENTS))[1:-1])

    def device_op(self, device: str, op: str, start_s: float, duration_s: float,
                  batch: int) -> None:
        self._ops.append((device, op, start_s, duration_s, batch))
        if len(self._ops) >= CHUNK_ITEMS:
            self._write_events(device_events(self._ops, self._tids))
            self._ops.clear()

    def kv_point(self, now: float, by_precision: dict[str, int]) -> None:
        """One point per instant: a second point at the same time replaces the first."""
        if self._last_point is not None and self._last_point[0] != now:
            self._points.append(self._last_point)
            if len(self._points) >= CHUNK_ITEMS:
                self._write_points()
        self._last_point = (now, by_precision)

    def commit(self, state: RunState) -> None:
        """Write what is buffered and the requests' spans; rename both files into place."""
        self._write_events(device_events(self._ops, self._tids))
        self._ops.clear()
        n = len(state.status)
        for lo in range(0, n, CHUNK_ITEMS):
            self._write_events(request_events(state, range(lo, min(lo + CHUNK_ITEMS, n))))
        self._trace.write(TRACE_TAIL)
        if self._last_point is not None:
            self._points.append(self._last_point)
            self._last_point = None
        self._write_points()
        self._commit_kv()
        self._trace.commit()

    def discard(self) -> None:
        """Drop both files (what ``commit`` renamed into place stays)."""
        self._trace.discard()
        self._kv_body.discard()

    def _write_events(self, events: Iterable[dict]) -> None:
        events = list(events)
        if events:  # a list's items as json.dumps separates them
            self._trace.write(", " + json.dumps(events)[1:-1])

    def _write_points(self) -> None:
        if not self._points:
            return
        if self._first_row_width is None:  # the narrowest row: precisions only ever add up
            self._first_row_width = len(self._names.keys() | self._points[0][1].keys())
        buf = io.StringIO()
        csv.writer(buf).writerows(kv_rows(self._points, self._names))
        self._kv_body.write(buf.getvalue())
        self._points.clear()

    def _commit_kv(self) -> None:
        """The header (every precision seen), then the rows, those written before a precision
        first appeared padded with zeros for it; the body file is removed."""
        kv = PartFile(self.kv_path, newline="")
        try:
            buf = io.StringIO()
            csv.writer(buf).writerow(["time_s", *self._names])
            kv.write(buf.getvalue())
            self._kv_body.file.flush()
            width = len(self._names) + 1
            with self._kv_body.tmp.open(newline="", encoding="utf-8") as body:
                if self._first_row_width in (None, width - 1):
                    shutil.copyfileobj(body, kv)
                else:
                    for line in body:
                        missing = width - (line.count(",") + 1)
                        kv.write(line[:-2] + ",0" * missing + "\r\n" if missing else line)
            kv.commit()
        except OSError as err:
            raise write_failed(self.kv_path, err) from None
        finally:
            kv.discard()
            self._kv_body.discard()
