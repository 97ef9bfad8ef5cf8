"""glibc malloc settings for the command-line tools, so that XLA:CPU's buffers are reused, not faulted in again.

XLA:CPU allocates a compiled program's temporary buffer (its activations, gradients, ...) at every call and
frees it afterwards. glibc serves a block that large (over 32 MB at most) with a fresh `mmap` and gives it back
with `munmap`, so every call page-faults all of it in again: at nanoGPT's CPU recipe size (4 layers, n_embd
128, block 64, batch 12) about 13,000 minor page faults per train-step call, most of the per-call cost that
made one step per call slower than ten (benchmarks/RESULTS.md). Serving large blocks from the heap, never
trimming it, and using one arena (XLA's worker threads would otherwise get heaps of their own, which glibc does
unmap) lets every call reuse the same pages: 0 faults per call after the first.

The price: memory freed by the process stays with it (up to its peak use) until it exits. Process-wide, hence
called by the command lines (`jaxgpt.cli.run_cli`) and not by library calls; a notebook or script may call
`keep_freed_memory()` itself, first thing. Settings given in `GLIBC_TUNABLES` win. Elsewhere than glibc (macOS,
musl), nothing changes.
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


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory (see the module docstring). Call it before JAX starts its threads,
    i.e. before the first computation. Returns whether the settings were applied."""
    if platform.libc_ver()[0] != "glibc" or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_ARENA_MAX, 1))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
