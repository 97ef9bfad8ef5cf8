"""XLA:CPU compiler flags the commands set before JAX starts its backend, measured faster on a 2-core CPU.

`--xla_cpu_enable_concurrency_optimized_scheduler=false`: XLA:CPU's default schedule runs independent operations
of a step side by side (the query, key and value products, ...), each then with part of the threads; in order,
each runs with all of them. The whole train step at the sweep's T = 256 ran 6% and 12% faster in two A/B runs,
at T = 64 and 128 the same within the noise (benchmarks/RESULTS.md, issue 25). The flags touch only XLA's CPU
compiler, not GPU or TPU programs. A flag already in XLA_FLAGS wins; like the allocator settings, process-wide,
hence set by the commands, not by library calls (a notebook may call `set_cpu_flags()` before its first
computation).
"""

from __future__ import annotations

import os

CPU_FLAGS = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def set_cpu_flags() -> str:
    """Add CPU_FLAGS to the XLA_FLAGS environment variable, except those it sets already; returns its value. Has
    an effect only before JAX's first computation (XLA reads XLA_FLAGS when its backend starts)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    named = {flag.lstrip("-").split("=")[0] for flag in flags}
    flags += [f"--{name}={value}" for name, value in CPU_FLAGS.items() if name not in named]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]
