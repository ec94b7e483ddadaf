"""The ONNX Runtime backends keep the memory the process frees (``adapters.ort_backend.memory``):
arrays freed and allocated again, as a session's outputs are every step, take no new pages."""

import subprocess
import sys

import pytest

from adapters.ort_backend.memory import keep_freed_memory

# arrays of 6-24 MB allocated, freed and allocated again; prints the page faults of the re-use
SNIPPET = """
import resource, sys, numpy as np
if sys.argv[1] == "keep":
    from adapters.ort_backend.providers import base_options
    base_options(1)  # what every ONNX Runtime session of infer-os is made with
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = 0
for size in (12 << 20, 20 << 20, 12 << 20, 24 << 20):
    a = np.ones(size, np.uint8); b = np.ones(size // 2, np.uint8); del a, b
    before = faults(); c = np.ones(size, np.uint8); total += faults() - before; del c
print(total)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_a_process_with_a_session_takes_its_freed_memory_back_without_page_faults():
    """Measured here: about 2,000 minor faults over the four re-uses in a plain process (each
    ~500: the memory went back to the OS), none once ``base_options`` has run."""
    pytest.importorskip("onnxruntime")
    if not keep_freed_memory():
        pytest.skip("this C library has no mallopt (not glibc)")
    assert _faults("keep") < 50
    assert _faults("plain") > 20 * max(_faults("keep"), 10)
