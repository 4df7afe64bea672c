"""pcvos.runtime.keep_freed_memory: freed blocks are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from pcvos.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
def churn():
    for _ in range(5):
        x = torch.ones(16 * 2**20)   # 64 MiB: above glibc's largest mmap threshold
        del x
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuned: bool) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "1" if tuned else "0"], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused():
    applied, tuned = _faults(True)
    if not applied:
        pytest.skip("not glibc")
    _, default = _faults(False)
    assert default > 5 * 16_000  # each fresh 64 MiB block faults in ~16k pages
    assert tuned < default / 20
