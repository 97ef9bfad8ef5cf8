"""glibc malloc settings for the command-line tools, so that XLA:CPU's buffers are reused, not faulted in again.

XLA:CPU allocates a compiled program's temporary buffer (its activations, gradients, ...) at every call and
frees it afterwards. glibc serves a block that large (over 32 MB at most) with a fresh `mmap` and gives it back
with `munmap`, so every call page-faults all of it in again: at nanoGPT's CPU recipe size (4 layers, n_embd
128, block 64, batch 12) about 13,000 minor page faults per train-step call, most of the per-call cost that
made one step per call slower than ten (benchmarks/RESULTS.md). Serving large blocks from the heap, never
trimming it, and using one arena (XLA's worker threads would otherwise get heaps of their own, which glibc does
unmap) lets every call reuse the same pages: 0 faults per call after the first.

The price: memory freed by the process stays with it until it exits, and for steps whose temporaries are large
the heap fragments: at the `lecture` size (4.5 GB of temporaries per step) the process grew by a step's
temporaries every few steps, to 24 GB and the out-of-memory killer within 12 steps and an evaluation. So
`jaxgpt.train` returns to glibc's defaults for large blocks (`use_default_malloc`) unless `worth_keeping`: when a
step's activations (`jaxgpt.core.mfu.step_activation_bytes`) exceed KEEP_FREED_LIMIT, or the run starts from
pretrained weights (`jaxgpt.cli.worth_keeping`); there the page faults are a small part of a long step.
Process-wide, hence called by the command lines (`jaxgpt.cli.run_cli`) and not by library calls; a notebook or
script may call `keep_freed_memory()` itself, first thing. Settings given in `GLIBC_TUNABLES` win. Elsewhere
than glibc (macOS, musl), nothing changes.
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
