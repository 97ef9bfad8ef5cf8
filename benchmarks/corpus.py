"""A generated Shakespeare-like corpus of any size, for the tokenizer and prepare benchmarks.

    python benchmarks/corpus.py OUT_DIR --megabytes=100 [--files=50] [--seed=0]

Lines are drawn from a pool of lines whose words follow tiny Shakespeare's word frequencies, in its layout (a
speaker's name, then a few lines of verse, then a blank line), so a BPE trained on it and the encoders see text
with Shakespeare's statistics, not copies of one text (which an encoder's cache would favour).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import numpy as np

from jaxgpt.data.text import read_text, resolve_data_path

POOL_LINES = 50_000


def line_pool(text: str, rng: np.random.Generator, n: int = POOL_LINES) -> list[str]:
    """`n` lines: a speaker's "NAME:" or verse of 4-11 words drawn by Shakespeare's word frequencies."""
    counts = collections.Counter(re.findall(r"[A-Za-z']+[,;:.!?]?", text))
    words, freq = list(counts), np.array(list(counts.values()), dtype=np.float64)
    speakers = sorted(set(re.findall(r"^([A-Z][A-Z ]+):$", text, flags=re.M)))
    drawn = rng.choice(len(words), size=n * 11, p=freq / freq.sum())
    lines = []
    for i in range(n):
        if i % 5 == 0:
            lines.append(f"\n{speakers[rng.integers(len(speakers))]}:\n")
            continue
        verse = " ".join(words[j] for j in drawn[i * 11: i * 11 + rng.integers(4, 12)])
        lines.append(verse[:1].upper() + verse[1:] + "\n")
    return lines


def write_corpus(out_dir: Path, total_bytes: int, files: int, seed: int = 0) -> list[Path]:
    """`files` text files in out_dir, about total_bytes in all."""
    rng = np.random.default_rng(seed)
    pool = line_pool(read_text(resolve_data_path()), rng)
    mean = sum(len(line) for line in pool) / len(pool)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        path = out_dir / f"part{f:05d}.txt"
        with open(path, "w", encoding="utf-8") as out:
            left = total_bytes // files
            while left > 0:  # in blocks of ~4 MB: bounded memory at any size
                n = max(1, min(left, 4_000_000) // int(mean))
                block = "".join(pool[i] for i in rng.integers(len(pool), size=n))
                out.write(block)
                left -= len(block.encode("utf-8"))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_corpus(args.out_dir, int(args.megabytes * 1e6), args.files, args.seed)
    print(f"wrote {len(paths)} files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB, into {args.out_dir}")


if __name__ == "__main__":
    main()
