"""glibc's malloc told to keep the memory a process frees, for the ONNX Runtime backends.

An ONNX Runtime session returns its outputs in fresh arrays: a prompt's K and V come back as
two arrays of about 12 MB for 512 tokens of SmolLM2-135M (float32), freed after the step.  glibc
serves allocations of that size with ``mmap`` and hands them back with ``munmap``, and trims
the heap's top when it frees, so the next step (and the torch work between: quantizing a
prompt's blocks into a new segment) takes its memory as fresh pages again, one page fault per
4 KiB.  Measured 2026-12-05 (a 2-core CPU, SmolLM2-135M, a prompt prefilled by ONNX Runtime and
its blocks quantized to INT8 by the tier check after it, five times): 128 tokens 14.9 / 6.9 /
3.0 / 3.4 / 5.5 ms with 6,041 / 559 / 9 / 12 / 422 minor page faults in the step; 512 tokens
50.1 ms (27,228 faults) then 8.9-11.9 ms; with the memory kept, 3.0-10.7 ms and 9.1-16.5 ms,
the faults after the first step in the tens.  The same work after a torch prefill faults a few
times and takes 3.1-3.3 and 9.0-10.9 ms.  ``validate`` read the difference as ONNX Runtime's
re-tiering moves 17-30 % slower than predicted.

``keep_freed_memory`` raises the mmap threshold to glibc's maximum (32 MiB on 64-bit) and the
trim threshold to 1 GiB: a process keeps what it freed, up to its peak, for its next steps.  It
does nothing where the C library has no ``mallopt`` (macOS, musl)."""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the most it takes
TRIM_THRESHOLD_BYTES = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process -> whether they are set."""
    global _done
    if _done is None:
        _done = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                     and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _done
