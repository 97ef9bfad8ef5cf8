"""`python -m jaxgpt.export SOURCE OUT --format=hf|pt [--push=REPO]`: a jaxgpt model (a run, a converted directory,
pretrained weights) as a Hugging Face save_pretrained directory or a PyTorch .pt (see jaxgpt.weights.export)."""

from __future__ import annotations

import argparse
import sys

from jaxgpt.cli import ArgumentParser, run_cli
from jaxgpt.system.errors import JaxgptError
from jaxgpt.weights import pretrained
from jaxgpt.weights.export import FORMATS, export


def push(out: str, repo: str, fmt: str) -> str:
    """Upload OUT to the Hugging Face hub repository `repo` (created if missing); a one-line summary."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise JaxgptError("--push needs huggingface_hub: pip install 'jaxgpt[pretrained]'") from None
    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        if fmt == "hf":
            api.upload_folder(repo_id=repo, folder_path=out)
        else:
            api.upload_file(repo_id=repo, path_or_fileobj=out, path_in_repo=out.rsplit("/", 1)[-1])
    except Exception as err:  # noqa: BLE001 - the hub's errors are many kinds: network, auth, offline mode
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise JaxgptError(f"uploading {out} to the hub repository {repo} failed ({first}); the export itself is "
                          f"complete in {out}") from None
    return f"uploaded {out} to https://huggingface.co/{repo}"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(formatter_class=argparse.HelpFormatter, prog="python -m jaxgpt.export",
                            description="Export a jaxgpt model to the Hugging Face format or a PyTorch .pt.")
    parser.add_argument("source", metavar="SOURCE", help="a jaxgpt run or converted directory (its latest "
                        f"checkpoint), {', '.join(pretrained.HUB_MODELS)}, a save_pretrained directory or a .pt file")
    parser.add_argument("out", metavar="OUT", help="the directory (hf) or file (pt) to write")
    parser.add_argument("--format", choices=FORMATS, default="hf", help="hf: a GPT2LMHeadModel save_pretrained "
                        "directory with its tokenizer (default); pt: the lecture's state_dict or nanoGPT's ckpt.pt")
    parser.add_argument("--push", metavar="REPO", help="then upload OUT to this Hugging Face hub repository")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    config, params, tokenizer = pretrained.load(args.source)
    print(export(params, config, tokenizer, args.out, args.format, args.overwrite))
    if args.push:
        print(push(args.out, args.push, args.format))


def entry_point() -> None:
    """The `jaxgpt-export` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
