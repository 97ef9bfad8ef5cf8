"""JAX's persistent compilation cache for the command-line tools, kept in the user's cache dir.

A second `python -m jaxgpt.train` or `python -m jaxgpt.sample` with the same shapes loads its compiled
programs from disk instead of compiling them again (the `lecture` sampler on a 2-core CPU: ~4 s -> ~1 s).
JAX's own settings win: `JAX_COMPILATION_CACHE_DIR=DIR` puts the cache elsewhere,
`JAX_ENABLE_COMPILATION_CACHE=false` turns it off. The least recently used programs are evicted beyond
MAX_BYTES. Programs that compile in MIN_COMPILE_SECONDS or more are kept, not only JAX's default of 1 s and more:
an evaluation's programs take ~0.5 s each on a 2-core CPU and were compiled again by every run
(`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` wins).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import platformdirs

MAX_BYTES = 1 << 30
MIN_COMPILE_SECONDS = 0.1


def default_dir() -> Path:
    return Path(platformdirs.user_cache_dir("jaxgpt")) / "jax_compilation_cache"


def enable_default() -> None:
    """Use default_dir() as JAX's compilation cache, unless JAX was told where to cache or not to. Call it
    before anything is compiled."""
    if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir is not None:
        return
    jax.config.update("jax_compilation_cache_dir", str(default_dir()))
    if jax.config.jax_compilation_cache_max_size == -1:  # JAX's default: unbounded
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
