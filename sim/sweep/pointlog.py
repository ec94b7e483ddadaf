"""The append-only log of a sweep's finished points (``DIR/points.jsonl``, what a rerun skips) and
the check every record passes before it is written or believed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sim.errors import UserError

POINTS_FILE = "points.jsonl"
STATUSES = ("ok", "failed")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: never written, so never believed


def _finite(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value))


def valid_record(record) -> bool:
    """A record as ``append`` writes it: a point id, a status, an error and finite metrics."""
    return (isinstance(record, dict) and isinstance(record.get("point_id"), str)
            and record.get("status") in STATUSES and isinstance(record.get("error"), str)
            and isinstance(record.get("metrics"), dict)
            and all(_finite(v) for v in record["metrics"].values()))


def checked(record: dict) -> dict:
    """The record to log for a finished point: one whose metrics are not all finite numbers (a
    NaN throughput, say) or that JSON cannot hold is a failed point with the reason, rather than
    a log, table and rerun that break on it."""
    metrics = record.get("metrics") or {}
    bad = [f"{k}={v!r}" for k, v in metrics.items() if not _finite(v)]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        return {**record, "status": "failed", "metrics": {},
                "error": f"metrics that are not finite numbers: {shown}"}
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as err:  # from a caller's own point function
        return {"point_id": record.get("point_id"), "values": record.get("values"),
                "cost_model": record.get("cost_model"), "status": "failed",
                "error": f"the point's record is not JSON ({err})", "metrics": {}}
    return record


class PointLog:
    """The append-only log of finished points.  ``append`` writes one whole line and flushes, so
    a killed run leaves every finished point readable; a torn last line (killed mid-write) is
    cut off when the log is opened again, and a corrupt line (not a record) is counted
    (``num_corrupt``) and removed, so its point runs again."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / POINTS_FILE
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError("cannot use the results folder (it is a file)", file=str(out_dir),
                            field="--out")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._records, self.num_corrupt = self._read()
            self._file = self.path.open("a")
        except OSError as err:
            raise UserError(f"cannot use the results folder ({err.strerror or err})",
                            file=str(out_dir), field="--out") from None

    def _read(self) -> tuple[dict[str, dict], int]:
        if not self.path.exists():
            return {}, 0
        data = self.path.read_bytes()
        lines = data.split(b"\n")[:-1]  # a torn last line (no newline) is dropped
        records, kept, corrupt = {}, [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode(), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError, RecursionError):
                record = None
            if not valid_record(record):
                corrupt += 1
                continue
            records[record["point_id"]] = record  # the last one written wins
            kept.append(line)
        if corrupt or not data.endswith(b"\n") and data:
            tmp = self.path.with_name(POINTS_FILE + ".tmp")
            tmp.write_bytes(b"".join(x + b"\n" for x in kept))
            os.replace(tmp, self.path)  # a kill now leaves the old log or the new, whole
        return records, corrupt

    def records(self) -> dict[str, dict]:
        """point_id -> its record (the last one written wins)."""
        return dict(self._records)

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
