"""`python -m jaxgpt.inspect SOURCE --text=FILE_OR_STRING [--compare=SOURCE2] --out=page.html`: one self-contained
page that shows what every token of a text cost the model and where every head looked (see jaxgpt.run.inspection)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxgpt.cli import ArgumentParser, run_cli
from jaxgpt.run.inspect_page import write_page
from jaxgpt.run.inspection import inspect_text
from jaxgpt.system import compile_cache
from jaxgpt.system.errors import UsageError
from jaxgpt.weights import pretrained


def read_text(text: str) -> str:
    """--text: a file's contents where it names a file, else the text itself; UsageError if empty."""
    path = Path(text).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # a text too long to be a file name
        is_file = False
    if is_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--text {path} cannot be read as UTF-8 text ({err})") from None
    if not text:
        raise UsageError("--text is empty; give a file or a string to inspect")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(formatter_class=argparse.HelpFormatter, prog="python -m jaxgpt.inspect",
                            description="Write one HTML page that shows each token's loss and every head's "
                                        "attention for a text.")
    parser.add_argument("source", metavar="SOURCE", help="a run or converted directory, "
                        f"{', '.join(pretrained.HUB_MODELS)}, a save_pretrained directory or a .pt file")
    parser.add_argument("--text", required=True, metavar="FILE_OR_STRING", help="the text: a file, or the text")
    parser.add_argument("--compare", metavar="SOURCE2", help="a second model, side by side over the same bytes")
    parser.add_argument("--out", default="inspect.html", metavar="PAGE", help="the page (default: %(default)s)")
    parser.add_argument("--top_k", type=int, default=5, metavar="K", help="next-token predictions shown "
                        "(default: %(default)s)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top_k < 1:
        raise UsageError(f"--top_k must be >= 1, got {args.top_k}")
    text = read_text(args.text)
    compile_cache.enable_default()
    inspections = []
    for source in [args.source] + ([args.compare] if args.compare else []):
        config, params, tokenizer = pretrained.load(source)
        if tokenizer is None:
            raise UsageError(f"{source} does not say which tokenizer it was trained with; convert it with its "
                             "tokenizer (python -m jaxgpt.convert MODEL.pt OUT_DIR --tokenizer=FILE), then inspect "
                             "OUT_DIR")
        inspections.append(inspect_text(config, params, tokenizer, text, source, args.top_k))
    write_page(args.out, text, inspections)
    first = inspections[0]
    print(f"wrote {args.out}: {len(first.pieces)} tokens, loss {first.loss:.4f}, {first.bits_per_byte:.4f} bits "
          "per byte" + "".join(f"; {i.source}: loss {i.loss:.4f}, {i.bits_per_byte:.4f} bits per byte"
                               for i in inspections[1:]))


def entry_point() -> None:
    """The `jaxgpt-inspect` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
