"""`python -m jaxgpt.prepare` on a generated corpus: wall time, MB/s, peak memory, and open_prepared's check.

    python benchmarks/prepare_big.py [--megabytes=2000] [--files=200] [--tokenizer=bpe] [--vocab_size=2048]
                                     [--tokenizer_train_bytes=N] [--tmp=/tmp] [--keep_data=DIR]

Writes a Shakespeare-like corpus of --megabytes in --files files (benchmarks/corpus.py) under --tmp, prepares it
in a child process (the command line, --quiet), and reports its wall time, input MB/s and peak resident memory
(the child's ru_maxrss), then times `open_prepared(verify=True)` (sha256 of the token files) and reports it per
GB of token files. The corpus is removed afterwards, and so is the prepared directory unless --keep_data names
where to move it (benchmarks/data_wait.py trains from it). The issue's target: a corpus of
2 GB or more prepares with under 1.5 GB of peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import corpus  # benchmarks/corpus.py

from jaxgpt.data.prepared import open_prepared
from jaxgpt.data.writer import TOKENIZER_TRAIN_BYTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=2000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--tokenizer", default="bpe", choices=["char", "bpe", "gpt2"])
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--tokenizer_train_bytes", type=int, default=TOKENIZER_TRAIN_BYTES)
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the corpus and dataset are written")
    parser.add_argument("--keep_data", help="move the prepared dataset here instead of removing it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jaxgpt-prepare-big-", dir=args.tmp))
    try:
        start = time.perf_counter()
        paths = corpus.write_corpus(work / "corpus", int(args.megabytes * 1e6), args.files)
        size = sum(p.stat().st_size for p in paths)
        print(f"corpus: {len(paths)} files, {size / 1e6:,.1f} MB, written in {time.perf_counter() - start:.1f} s "
              f"({os.cpu_count()} cores)", flush=True)
        command = [sys.executable, "-m", "jaxgpt.prepare", str(work / "corpus"), f"--out={work / 'data'}",
                   f"--tokenizer={args.tokenizer}", "--quiet", f"--tokenizer_train_bytes={args.tokenizer_train_bytes}"]
        if args.tokenizer == "bpe":
            command.append(f"--vocab_size={args.vocab_size}")
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(f"prepare: {wall:.1f} s, {size / 1e6 / wall:.1f} MB/s of input, peak memory {peak_mb:,.0f} MB "
              f"(target < 1536 MB)", flush=True)
        start = time.perf_counter()
        data = open_prepared(work / "data", verify=True)
        verify = time.perf_counter() - start
        token_gb = (data.train.nbytes + data.val.nbytes) / 1e9
        print(f"tokens: {len(data.train):,} train, {len(data.val):,} val ({data.meta['dtype']}, {token_gb:.2f} GB)")
        print(f"open_prepared(verify=True): {verify:.2f} s, {verify / token_gb:.2f} s per GB of token files")
        if args.keep_data:
            shutil.move(work / "data", args.keep_data)
            print(f"kept the prepared dataset in {args.keep_data}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
