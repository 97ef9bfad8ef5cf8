"""`python -m jaxgpt.convert MODEL.pt OUT_DIR`: a PyTorch GPT checkpoint -> a jaxgpt run directory."""

from __future__ import annotations

import argparse
import sys

from jaxgpt.cli import ArgumentParser, run_cli
from jaxgpt.weights.convert import convert_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(formatter_class=argparse.HelpFormatter, prog="python -m jaxgpt.convert",
                            description="Convert a PyTorch GPT checkpoint (lecture, nanoGPT or Hugging Face GPT-2 "
                                        "layout) into a jaxgpt run directory.")
    parser.add_argument("model", metavar="MODEL.pt", help="torch.save(model.state_dict()) file or nanoGPT ckpt.pt")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the jaxgpt run directory to write")
    parser.add_argument("--tokenizer", metavar="FILE", help="the training text, a tokenizer.json or gpt2 "
                        "(default: the dataset: $JAXGPT_DATA, the cache or a download)")
    parser.add_argument("--n_head", type=int, help="heads per block; needed for nanoGPT state_dicts without "
                        "model_args and for Hugging Face GPT-2")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty OUT_DIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(convert_checkpoint(args.model, args.out_dir, args.tokenizer, args.n_head, args.overwrite))


def entry_point() -> None:
    """The `jaxgpt-convert` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
