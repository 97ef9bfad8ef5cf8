"""The dataset: where the text comes from, the split and batches (the tokenizers are in jaxgpt.tokenizers).

Resolution order for the text file: an explicit path, then `$JAXGPT_DATA`, then the user cache,
then a download of tiny Shakespeare (verified by sha256, written atomically into the cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import platformdirs

from jaxgpt.errors import UsageError
from jaxgpt.tokenizers import CharTokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATA_ENV_VAR = "JAXGPT_DATA"
TRAIN_FRACTION = 0.9  # first 90% train, last 10% val


def cached_shakespeare_path() -> Path:
    """Where the downloaded tiny Shakespeare is kept (the user's cache dir)."""
    return Path(platformdirs.user_cache_dir("jaxgpt")) / "tinyshakespeare" / "input.txt"


def resolve_data_path(data_path: str | os.PathLike | None = None) -> Path:
    """The text file to train on: `data_path`, else `$JAXGPT_DATA`, else the cache, else a download."""
    for explicit, origin in ((data_path, "--data_path"), (os.environ.get(DATA_ENV_VAR), f"${DATA_ENV_VAR}")):
        if explicit:
            path = Path(explicit).expanduser()
            if not path.is_file():
                raise UsageError(f"{origin} points to {str(path)!r}, which is not a file; give a UTF-8 text file")
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        tmp.write(payload)
    os.replace(tmp.name, dest)


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file as the lecture does (Python's text mode: \\r\\n and \\r become \\n), without a
    leading byte-order mark; empty or undecodable files are usage errors."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise UsageError(f"{path} is empty; give a text file to train on")
    return text


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> np.ndarray:
    """`tokens` as an int32 array, after checking that they are integers (no silent cast of floats, strings or
    bools) in [0, vocab_size). The check runs on the host, before anything is compiled: a model cannot check ids
    inside a compiled function (out-of-range ids give NaN or wrap around there)."""
    array = np.asarray(tokens)
    if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
        kind = type(tokens).__name__ if array.dtype == object or array.dtype.kind in "USO" else array.dtype
        raise UsageError(f"{name} must be integer token ids, got {kind}; encode text with the run's tokenizer")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab_size:
            raise UsageError(f"{name} must be token ids in [0, {vocab_size}), got values in [{low}, {high}]")
    return array.astype(np.int32)


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def train_val_split(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First 90% for training, the rest for validation; each must hold at least block_size + 1 tokens."""
    n = int(TRAIN_FRACTION * len(tokens))
    train, val = tokens[:n], tokens[n:]
    for name, split in (("train", train), ("val", val)):
        if len(split) < block_size + 1:
            raise UsageError(
                f"the {name} split has {len(split)} tokens but block_size {block_size} needs at least "
                f"{block_size + 1}; use a longer text or a smaller --block_size"
            )
    return train, val


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Encoded text split into train/val token arrays, with its tokenizer."""

    tokenizer: CharTokenizer
    train: np.ndarray  # (N_train,) int32
    val: np.ndarray  # (N_val,) int32

    def fingerprint(self) -> str:
        """sha256 of the encoded text: a resumed run must train on the same tokens."""
        digest = hashlib.sha256(np.ascontiguousarray(self.train).tobytes())
        digest.update(np.ascontiguousarray(self.val).tobytes())
        return digest.hexdigest()


def load_dataset(data_path: str | os.PathLike | None, block_size: int) -> Dataset:
    """Resolve, read, tokenize and split the training text."""
    text = read_text(resolve_data_path(data_path))
    tokenizer = CharTokenizer.from_text(text)
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int32)
    train, val = train_val_split(tokens, block_size)
    return Dataset(tokenizer, train, val)


def get_batch(key: jax.Array, data: jax.Array, batch_size: int, block_size: int) -> tuple[jax.Array, jax.Array]:
    """Random contexts x (B, T) and their next-token targets y (B, T), drawn on device (jittable)."""
    ix = jax.random.randint(key, (batch_size,), 0, data.shape[0] - block_size)  # (B,) start offsets
    offsets = ix[:, None] + jnp.arange(block_size)  # (B, T)
    return data[offsets], data[offsets + 1]
