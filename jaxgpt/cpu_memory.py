"""Keep freed memory inside the process, so that XLA:CPU's per-step buffers are not faulted in again every step.

XLA:CPU allocates a train step's temporary buffers with malloc when the step starts and frees them when it
ends (4.6 GB for `lecture`). glibc serves blocks that large with mmap and gives them back with munmap, so every
step page-faults and zeroes all of that memory again. On our 2-core VM that made a `lecture` step up to twice as
slow (6.5 s alone, 13 s while other processes held memory; benchmarks/RESULTS.md, "Memory reuse"). Asking glibc
to serve large blocks from its heap and to keep what is freed makes only the first step pay. The cost: the
process keeps its peak memory until it exits, which a training process reaches at every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
_NEVER_TRIM = 2**31 - 1  # the largest threshold mallopt accepts (an int)


@functools.cache
def retain_freed_memory() -> bool:
    """Tell glibc's malloc not to use mmap and not to return freed heap memory; True where applied (glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
