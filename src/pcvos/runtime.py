"""Process-level settings for fast CPU inference, applied by the command line, never on import.

PyTorch frees and re-allocates tensors of tens of megabytes on every clip. glibc's malloc serves
requests above its mmap threshold (at most 32 MiB) with fresh mmaps and returns freed memory at
the top of the heap to the kernel, so the next clip takes a page fault on every 4 KiB it touches
again: at 480p that was 50-100 thousand faults and 0.1-0.25 CPU-seconds of kernel time per frame
(see benchmarks/speed.py). Keeping freed memory in the process makes it reusable without faults.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no mmap for large blocks, no trimming).

    The process' resident memory then stays at its peak until it exits, which suits a command
    that segments a video and ends; a long-lived service may prefer not to call this. Returns
    whether the setting took effect (False off Linux/glibc, e.g. on macOS or musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # glibc still falls back to mmap if the heap cannot grow, so this cannot make allocation fail
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
