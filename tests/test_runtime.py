"""pcvos.runtime.keep_freed_memory: freed blocks are reused instead of faulted in again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK_BYTES = 64 * 2**20  # above glibc's largest mmap threshold
BLOCKS = 5
SCRIPT = f"""
import resource, sys, torch
from pcvos.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
def churn():
    for _ in range({BLOCKS}):
        x = torch.ones({BLOCK_BYTES // 4})  # float32
        del x
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
THP = Path("/sys/kernel/mm/transparent_hugepage")


def _largest_fault_size() -> int:
    """The most bytes one page fault may map in a fresh anonymous block on this kernel.

    The base page (4 KiB on x86, 4, 16 or 64 KiB on ARM), or a transparent huge page where the
    kernel uses them for every mapping: the PMD size (2 MiB on x86) under ``enabled = [always]``,
    or a multi-size THP (kernel 6.8+, ``hugepages-<n>kB/enabled``) set to always, or to inherit
    while the top level is always. Huge pages under ``madvise`` only serve regions asked for, and
    the subprocess is run without the variables that would make torch or glibc ask.
    """
    size = os.sysconf("SC_PAGE_SIZE")
    try:
        top = THP.joinpath("enabled").read_text()
    except OSError:
        return size
    if "[always]" in top:
        try:
            size = max(size, int(THP.joinpath("hpage_pmd_size").read_text()))
        except (OSError, ValueError):
            size = max(size, 2 * 2**20)
    for d in THP.glob("hugepages-*kB"):
        try:
            mode = d.joinpath("enabled").read_text()
        except OSError:
            continue
        if "[always]" in mode or ("[inherit]" in mode and "[always]" in top):
            size = max(size, int(re.fullmatch(r"hugepages-(\d+)kB", d.name).group(1)) * 1024)
    return size


def _faults(tuned: bool) -> tuple[bool, int]:
    # THP_MEM_ALLOC_ENABLE (torch) and GLIBC_TUNABLES (glibc.malloc.hugetlb) would madvise huge pages
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "1" if tuned else "0"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused():
    applied, tuned = _faults(True)
    if not applied:
        pytest.skip("not glibc")
    _, default = _faults(False)
    # a fresh block takes at least one fault per (largest) page it spans: counted from the page
    # size, not as 4 KiB pages, which ARM kernels with larger pages or THP=always would not give
    pages_per_block = BLOCK_BYTES // _largest_fault_size()
    assert default >= BLOCKS * pages_per_block, (default, pages_per_block)  # every block faulted in anew
    assert tuned < pages_per_block / 2, (tuned, pages_per_block)  # not even half of one block was
