"""Example infer-os policies, a worked third-party package.

- ``RecencyTiering`` (kind ``recency``, tiering family): the newest blocks of each request at
  FP16, older ones at INT8, or INT4 under device memory pressure.
- ``BackoffSpeculation`` (kind ``backoff``, speculation family): AIMD on the draft length, capped
  where one more draft token no longer pays for itself.

Both are frozen dataclasses using only the standard library and infer-os's ``policies`` package;
``pyproject.toml`` registers them by kind in the ``infer_os.policies`` entry-point group.
"""

from __future__ import annotations

from example_policies.speculation import BackoffSpeculation
from example_policies.tiering import RecencyTiering

__all__ = ["BackoffSpeculation", "RecencyTiering"]
