"""retain_freed_memory keeps freed blocks in the process (checked in a fresh process: the setting is global)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from jaxgpt.cpu_memory import retain_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

applied = retain_freed_memory() if sys.argv[1] == "retain" else None
block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page touched
before_free = rss_mib()
del block
print(applied, before_free - rss_mib())  # MiB given back to the kernel by the free
"""


def freed_mib(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, freed = out.split()
    return applied, float(freed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_large_blocks_stay_in_the_process_only_when_asked():
    assert freed_mib("default")[1] > 200  # glibc's default: the 256 MiB block goes straight back
    applied, freed = freed_mib("retain")
    assert applied == "True" and freed < 16
