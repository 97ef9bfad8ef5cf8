"""The dataset: where the text comes from, the split and batches (the tokenizers are in jaxgpt.data.tokenizers).

Resolution order for the text file: an explicit path, then `$JAXGPT_DATA`, then the user cache,
then a download of tiny Shakespeare (verified by sha256, written atomically into the cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import platformdirs

from jaxgpt.data.prepared import META, open_prepared
from jaxgpt.data.tokenizers import CharTokenizer, Tokenizer
from jaxgpt.system.errors import UsageError
from jaxgpt.system.files import staged

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATA_ENV_VAR = "JAXGPT_DATA"
TRAIN_FRACTION = 0.9  # first 90% train, last 10% val
MAX_SPLIT_TOKENS = 2**31 - 1  # window offsets are int32 on the devices


def cached_shakespeare_path() -> Path:
    """Where the downloaded tiny Shakespeare is kept (the user's cache dir)."""
    return Path(platformdirs.user_cache_dir("jaxgpt")) / "tinyshakespeare" / "input.txt"


def resolve_data_path(data_path: str | os.PathLike | None = None) -> Path:
    """The text file (or prepared dataset directory) to train on: `data_path`, else `$JAXGPT_DATA`, else the cache,
    else a download."""
    for explicit, origin in ((data_path, "--data_path"), (os.environ.get(DATA_ENV_VAR), f"${DATA_ENV_VAR}")):
        if explicit:
            path = Path(explicit).expanduser()
            if not (path.is_file() or path.is_dir()):
                raise UsageError(f"{origin} points to {str(path)!r}, which does not exist; give a UTF-8 text file "
                                 "or a dataset directory written by python -m jaxgpt.prepare")
            return path
    cached = cached_shakespeare_path()
    if cached.is_file() and _sha256(cached.read_bytes()) == SHAKESPEARE_SHA256:
        return cached
    download_shakespeare(cached)
    return cached


def download_shakespeare(dest: Path, url: str = SHAKESPEARE_URL) -> None:
    """Download tiny Shakespeare to `dest`, verify its sha256, and move it into place atomically."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise UsageError(
            f"could not download tiny Shakespeare from {url} ({err}); download input.txt yourself and pass "
            f"--data_path=FILE or set {DATA_ENV_VAR}=FILE"
        ) from None
    digest = _sha256(payload)
    if digest != SHAKESPEARE_SHA256:
        raise UsageError(f"download from {url} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; not using it")
    with staged(dest) as staging:
        staging.write_bytes(payload)


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file as the lecture does (Python's text mode: \\r\\n and \\r become \\n), without a
    leading byte-order mark; empty, undecodable or binary (NUL bytes: token files) files are usage errors."""
    raw = Path(path).read_bytes()
    if (nul := raw.find(b"\0")) >= 0:
        raise UsageError(f"{path} is not text (a NUL byte at offset {nul:,}); give a UTF-8 text file, or a prepared "
                         "dataset's directory (--data_path=DIR)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise UsageError(f"{path} is empty; give a text file to train on")
    return text


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def check_split_lengths(train: np.ndarray, val: np.ndarray, block_size: int) -> None:
    """Each split must hold at least block_size + 1 tokens (one window), and at most MAX_SPLIT_TOKENS."""
    for name, split in (("train", train), ("val", val)):
        if len(split) > MAX_SPLIT_TOKENS:
            raise UsageError(f"the {name} split has {len(split):,} tokens, more than the {MAX_SPLIT_TOKENS:,} that "
                             "32-bit window offsets reach; prepare the corpus as several smaller datasets")
        if len(split) < block_size + 1:
            raise UsageError(
                f"the {name} split has {len(split)} tokens but block_size {block_size} needs at least "
                f"{block_size + 1}; use a longer text or a smaller --block_size"
            )


def train_val_split(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First 90% for training, the rest for validation; each must hold at least block_size + 1 tokens."""
    n = int(TRAIN_FRACTION * len(tokens))
    train, val = tokens[:n], tokens[n:]
    check_split_lengths(train, val, block_size)
    return train, val


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Token ids split into train/val arrays, with their tokenizer."""

    tokenizer: Tokenizer
    train: np.ndarray  # (N_train,) int32, or a prepared dataset's np.memmap (uint16 or uint32)
    val: np.ndarray  # (N_val,)
    memory_mapped: bool = False  # too big for the devices: batches are gathered on the host (jaxgpt.data.batches)
    prepared_sha256: str | None = None  # a prepared dataset's fingerprint, from its meta.json's sha256s

    def fingerprint(self) -> str:
        """sha256 of the tokens (of a text file) or of the prepared dataset's files: a resumed run must train on
        the same tokens."""
        if self.prepared_sha256:
            return self.prepared_sha256
        digest = hashlib.sha256(np.ascontiguousarray(self.train).tobytes())
        digest.update(np.ascontiguousarray(self.val).tobytes())
        return digest.hexdigest()


def load_dataset(data_path: str | os.PathLike | None, block_size: int) -> Dataset:
    """A text file read, tokenized by characters and split (kept on the devices for training), or a dataset
    prepared by `python -m jaxgpt.prepare`, checked against its meta.json and memory-mapped."""
    path = resolve_data_path(data_path)
    if path.is_file() and (path.parent / META).is_file():
        raise UsageError(f"{path} is a file of the prepared dataset in {path.parent}; train on the dataset: "
                         f"--data_path={path.parent}")
    if path.is_dir():
        prepared = open_prepared(path)
        check_split_lengths(prepared.train, prepared.val, block_size)
        return Dataset(prepared.tokenizer, prepared.train, prepared.val, memory_mapped=True,
                       prepared_sha256=prepared.fingerprint)
    text = read_text(path)
    tokenizer = CharTokenizer.from_text(text)
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int32)
    train, val = train_val_split(tokens, block_size)
    return Dataset(tokenizer, train, val)
