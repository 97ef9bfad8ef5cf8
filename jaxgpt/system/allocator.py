"""glibc malloc settings for the commands, so that XLA:CPU's buffers are reused, not faulted in again.

XLA:CPU allocates a compiled call's temporaries at every call; glibc serves blocks that large with `mmap` and
returns them with `munmap`, so each call page-faults them in again (about 13,000 faults per train-step call at
nanoGPT's CPU recipe size: most of the per-call cost). `keep_freed_memory` serves large blocks from one heap,
never trimmed: 0 faults after the first call. For steps with large temporaries the heap fragments instead (to
24 GB at the `lecture` size), so a run returns to the defaults (`use_default_malloc`) beyond KEEP_FREED_LIMIT
of activations (`jaxgpt.cli.worth_keeping`; docs/performance.md). There, on a CPU, `python -m jaxgpt.train`
starts itself again with glibc's transparent-huge-page tunable (`restart_with_huge_pages`): the temporaries are
mapped afresh at every call, but in 2 MiB pages, ~500x fewer faults, with bounded memory. Process-wide, hence
called by the commands, not by library calls; a notebook may call `keep_freed_memory()` first thing.
`GLIBC_TUNABLES` wins. Elsewhere than glibc, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

NEVER_TRIM = 2**31 - 1  # the largest value mallopt accepts (an int)
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
KEEP_FREED_LIMIT = 2**29  # bytes of a train step's activations up to which freed memory is kept (512 MiB)
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on what malloc maps
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # e.g. "always [madvise] never"


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


def huge_pages_possible() -> bool:
    """Whether glibc's transparent-huge-page tunable would take effect here: glibc 2.35 or later, and the kernel's
    transparent huge pages in "always" or "madvise" mode."""
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
        return False
    try:
        return "[never]" not in THP_MODE.read_text()
    except OSError:
        return False


def restart_with_huge_pages() -> None:
    """Replace this process with its own command line started again with `HUGE_PAGES_TUNABLE`: glibc reads its
    tunables only at start-up. Returns (doing nothing) where GLIBC_TUNABLES is set already (yours win, and the
    restarted process has it) or the tunable would not take effect. Call it from a command's own process only,
    before its work: everything starts again."""
    if "GLIBC_TUNABLES" in os.environ or not huge_pages_possible():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE})
