"""`python -m jaxgpt.prepare INPUT... --tokenizer=char|bpe|gpt2 --out=DATA_DIR`: tokenize text into a prepared
dataset (see jaxgpt.prepare)."""

from __future__ import annotations

import argparse
import sys

from jaxgpt.cli import ArgumentParser, run_cli
from jaxgpt.data.writer import TOKENIZER_TRAIN_BYTES, prepare
from jaxgpt.system.interrupt import terminate_as_interrupt


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m jaxgpt.prepare", formatter_class=argparse.HelpFormatter,
                            description="Tokenize text files (one document per file) into DATA_DIR: train.bin, "
                                        "val.bin, tokenizer.json and meta.json (docs/data.md).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="text files, directories (searched recursively), globs; .gz files are decompressed")
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="the directory to write")
    parser.add_argument("--tokenizer", default="char", choices=["char", "bpe", "gpt2"],
                        help="char: the inputs' characters (default); bpe: a byte-level BPE trained on the training "
                             "text; gpt2: GPT-2's encoding (tiktoken's cached files)")
    parser.add_argument("--vocab_size", type=int, metavar="N", help="tokens of the BPE (>= 257), e.g. 2048")
    parser.add_argument("--val_fraction", type=float, metavar="F",
                        help="the last F of each document validates (default: 0.1)")
    parser.add_argument("--val", nargs="+", default=[], metavar="INPUT",
                        help="validation inputs instead (then all of the INPUTs train)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "uint16", "uint32"],
                        help="token file type (default auto: uint16 up to 65536 tokens, else uint32)")
    parser.add_argument("--tokenizer_train_bytes", type=int, default=TOKENIZER_TRAIN_BYTES, metavar="N",
                        help="characters of training text, spread over the documents, that a BPE is trained on "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace DATA_DIR if it holds a prepared dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages on stderr")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with terminate_as_interrupt():  # a SIGTERM (timeout, a scheduler) removes the partial output, as Ctrl-C does
        meta = prepare(args.inputs, args.out, args.tokenizer, args.vocab_size, args.val_fraction, args.val, args.dtype,
                       args.overwrite, args.tokenizer_train_bytes, progress=not args.quiet,
                       log=lambda line: None if args.quiet else print(line, file=sys.stderr))
    print(f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab_size {meta['vocab_size']}, {meta['dtype']}) from {meta['documents']} "
          "documents")


def entry_point() -> None:
    """The `jaxgpt-prepare` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
