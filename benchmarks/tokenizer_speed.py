"""Byte-level BPE libraries compared: training time and encoding speed on the same text.

    python benchmarks/tokenizer_speed.py [--vocab_sizes="512 2048 8192"] [--big_megabytes=20] [--repeats=3]
                                         [--piece_chars=1000000]

Candidates: Hugging Face `tokenizers` (trains and encodes; GPT-2's pre-tokenizer) and `rustbpe` to train with
`tiktoken` to encode, as nanochat does (GPT-4's pre-tokenizer, rustbpe's default). Texts: tiny Shakespeare and a
generated Shakespeare-like text of --big_megabytes (benchmarks/corpus.py). Each library trains on the whole text
at each vocab size (the end-of-text token included in it); then the text, in pieces of --piece_chars characters
(1M: what prepare encodes), is encoded with the library's batch encoder on every core (best of --repeats; MB/s of
UTF-8 input). Both see the same pieces.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import corpus  # benchmarks/corpus.py
import tiktoken
import tokenizers
from rustbpe import Tokenizer as RustBPE
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxgpt.data.text import read_text, resolve_data_path

EOT = "<|endoftext|>"


def pieces(text: str, size: int) -> list[str]:
    return [text[i: i + size] for i in range(0, len(text), size)]


def hf_train(texts: list[str], vocab_size: int):
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return lambda batch: [e.ids for e in tok.encode_batch(batch, add_special_tokens=False)]


def rust_train(texts: list[str], vocab_size: int):
    trainer = RustBPE()
    trainer.train_from_iterator(iter(texts), vocab_size - 1)
    ranks = {bytes(k): v for k, v in trainer.get_mergeable_ranks()}
    enc = tiktoken.Encoding("bench", pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                            special_tokens={EOT: len(ranks)})
    return lambda batch: enc.encode_ordinary_batch(batch, num_threads=os.cpu_count())


CANDIDATES = {"tokenizers (HF)": hf_train, "rustbpe + tiktoken": rust_train}


def measure(name: str, text: str, vocab_sizes: list[int], repeats: int, piece_chars: int) -> None:
    texts, mb = pieces(text, piece_chars), len(text.encode("utf-8")) / 1e6
    print(f"\n{name}: {mb:.1f} MB")
    print(f"{'library':<20} {'vocab':>6} {'train s':>8} {'encode MB/s':>12} {'tokens':>11} {'bytes/token':>12}")
    for vocab_size in vocab_sizes:
        for library, train in CANDIDATES.items():
            start = time.perf_counter()
            encode = train(texts, vocab_size)
            train_s = time.perf_counter() - start
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                ids = encode(texts)
                best = min(best, time.perf_counter() - start)
            n = sum(len(row) for row in ids)
            print(f"{library:<20} {vocab_size:>6} {train_s:>8.2f} {mb / best:>12.1f} {n:>11,} {mb * 1e6 / n:>12.2f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_sizes", default="512 2048 8192")
    parser.add_argument("--big_megabytes", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--piece_chars", type=int, default=1_000_000)
    args = parser.parse_args()
    vocab_sizes = [int(v) for v in args.vocab_sizes.split()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; tokenizers "
          f"{tokenizers.__version__}, tiktoken {tiktoken.__version__ if hasattr(tiktoken, '__version__') else '?'}")
    measure("tiny Shakespeare", read_text(resolve_data_path()), vocab_sizes, args.repeats, args.piece_chars)
    with tempfile.TemporaryDirectory() as tmp:
        path = corpus.write_corpus(Path(tmp), int(args.big_megabytes * 1e6), files=1)[0]
        big = path.read_text(encoding="utf-8")
    measure("generated Shakespeare-like text", big, vocab_sizes, args.repeats, args.piece_chars)
    print(f"\nsummary: pieces of {args.piece_chars:,} characters, best of {args.repeats}")


if __name__ == "__main__":
    main()
