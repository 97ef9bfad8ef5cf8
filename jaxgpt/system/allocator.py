"""glibc malloc settings for the commands, so that XLA:CPU's buffers are reused, not faulted in again.

XLA:CPU allocates a compiled call's temporaries at every call; glibc serves blocks that large with `mmap` and
returns them with `munmap`, so each call page-faults them in again (about 13,000 faults per train-step call at
nanoGPT's CPU recipe size: most of the per-call cost). `keep_freed_memory` serves large blocks from one heap,
never trimmed: 0 faults after the first call. For steps with large temporaries the heap fragments instead (to
24 GB at the `lecture` size), so a run returns to the defaults (`use_default_malloc`) beyond KEEP_FREED_LIMIT
of activations (`jaxgpt.cli.worth_keeping`; docs/performance.md). Process-wide, hence called by the commands,
not by library calls; a notebook may call `keep_freed_memory()` first thing. `GLIBC_TUNABLES` wins. Elsewhere
than glibc, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

NEVER_TRIM = 2**31 - 1  # the largest value mallopt accepts (an int)
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
KEEP_FREED_LIMIT = 2**29  # bytes of a train step's activations up to which freed memory is kept (512 MiB)


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    if platform.libc_ver()[0] != "glibc" or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory (see the module docstring). Call it before JAX starts its threads,
    i.e. before the first computation. Returns whether the settings were applied."""
    return _mallopt(((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_ARENA_MAX, 1)))


def use_default_malloc() -> bool:
    """Undo `keep_freed_memory` for large blocks: mmap them and trim the heap again (one arena stays). Returns
    whether the settings were applied."""
    return _mallopt(((M_MMAP_MAX, DEFAULT_MMAP_MAX), (M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)))
