"""The prepared-dataset format and its reader: a directory of token files written by `jaxgpt.data.writer`.

    DATA_DIR/
      train.bin        the training tokens: raw little-endian uint16 (vocab_size <= 65536) or uint32
      val.bin          the validation tokens, likewise
      tokenizer.json   the tokenizer (jaxgpt.data.tokenizers, any kind)
      meta.json        format, tokenizer kind, vocab_size, dtype, counts, the inputs' and outputs' sha256

`open_prepared` checks a directory against its meta.json and maps the token files read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from jaxgpt.data.tokenizers import TOKENIZER_FILE as TOKENIZER
from jaxgpt.data.tokenizers import Tokenizer, load_tokenizer
from jaxgpt.system.errors import UsageError

FORMAT = "jaxgpt-tokens-1"
TRAIN, VAL, META = "train.bin", "val.bin", "meta.json"
DATASET_FILES = (TRAIN, VAL, TOKENIZER, META)  # all that a prepared dataset's directory holds
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
READ_TOKENS = 1 << 23  # tokens hashed and checked at a time when a dataset is opened


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A prepared dataset: its tokenizer, its token files mapped read-only, and its meta.json."""

    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.memmap  # (train_tokens,) uint16 or uint32
    val: np.memmap  # (val_tokens,)

    @property
    def fingerprint(self) -> str:
        """sha256 over the sha256s meta.json records for train.bin, val.bin and tokenizer.json."""
        digests = self.meta["sha256"]
        return hashlib.sha256(" ".join(digests[name] for name in (TRAIN, VAL, TOKENIZER)).encode()).hexdigest()


def open_prepared(path: str | os.PathLike, verify: bool = True) -> PreparedData:
    """The prepared dataset in `path`, checked against its meta.json: format, dtype, vocab_size, the tokenizer
    (always hashed), file sizes, non-empty splits and, with `verify`, the token files' sha256 and that every
    token id is in the vocabulary (one read of each file, about N s per GB, see docs/data.md). UsageError, one
    line, for anything that does not match."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise UsageError(f"{path} is not a prepared dataset (no {META}); make one with python -m jaxgpt.prepare")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        dtype = DTYPES[meta["dtype"]]
        counts = {TRAIN: int(meta["train_tokens"]), VAL: int(meta["val_tokens"])}
        vocab_size, digests = int(meta["vocab_size"]), {name: str(meta["sha256"][name]) for name in
                                                        (TRAIN, VAL, TOKENIZER)}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(f"{meta_file} is damaged ({type(err).__name__}: {err}); prepare the dataset again") from None
    _check_dtype_in(meta_file, vocab_size, meta["dtype"])
    if not (path / TOKENIZER).is_file() or file_sha256(path / TOKENIZER) != digests[TOKENIZER]:
        raise UsageError(f"{path / TOKENIZER} is missing or not the one {META} records (sha256); prepare again")
    tokenizer = load_tokenizer(path / TOKENIZER)
    if tokenizer.vocab_size != vocab_size:
        raise UsageError(f"{path / TOKENIZER} has {tokenizer.vocab_size} tokens but {META} says {vocab_size}")
    arrays = {}
    for name, count in counts.items():
        file = path / name
        if count == 0:
            raise UsageError(f"{file}: the {name.removesuffix('.bin')} split is empty; prepare with more text")
        size = file.stat().st_size if file.is_file() else None
        if size != count * dtype.itemsize:
            found = "is missing" if size is None else f"has {size:,} bytes"
            raise UsageError(f"{file} {found} but {META} says {count:,} {meta['dtype']} tokens "
                             f"({count * dtype.itemsize:,} bytes): truncated, swapped or from another dataset")
        arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=(count,))
        if verify:
            sha256, largest = _read_through(arrays[name])
            if sha256 != digests[name]:
                raise UsageError(f"{file} does not match the sha256 in {META}: changed, swapped or from another "
                                 "dataset; prepare it again")
            if largest >= vocab_size:
                raise UsageError(f"{file} holds token id {largest}, but the vocabulary has {vocab_size} tokens: "
                                 f"{META} was edited (dtype, counts) or is another dataset's; prepare it again")
    return PreparedData(path.absolute(), meta, tokenizer, arrays[TRAIN], arrays[VAL])


def _read_through(tokens: np.memmap) -> tuple[str, int]:
    """The sha256 of a token file's bytes and its largest token id, in one pass of READ_TOKENS at a time."""
    digest, largest = hashlib.sha256(), 0
    for start in range(0, len(tokens), READ_TOKENS):
        chunk = np.asarray(tokens[start:start + READ_TOKENS])
        digest.update(chunk)
        largest = max(largest, int(chunk.max()))
    return digest.hexdigest(), largest


def _check_dtype_in(meta_file: Path, vocab_size: int, dtype: str) -> None:
    if vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise UsageError(f"{meta_file} says vocab_size {vocab_size} in {dtype} tokens, which cannot hold it")
