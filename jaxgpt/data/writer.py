"""Writing prepared datasets: text files of any size tokenized once into a directory of token files (the format:
jaxgpt.data.prepared).

`prepare` streams its inputs (one document per file; text files, directories, globs, .gz) in bounded memory,
encodes on every core and writes the directory atomically.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import dataclasses
import glob
import gzip
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from jaxgpt.data.destination import Destination
from jaxgpt.data.prepared import DTYPES, FORMAT, META, TOKENIZER, TRAIN, VAL, file_sha256
from jaxgpt.data.tokenizers import CharTokenizer, Tokenizer, gpt2_tokenizer, train_bpe
from jaxgpt.system.errors import UsageError

READ_BYTES = 1 << 22  # bytes read from an input at a time
PIECE_CHARS = 1 << 20  # about this many characters per piece handed to the encoder
MAX_PIECE_CHARS = 1 << 24  # a piece with no safe cut in it is cut here anyway
TOKENIZER_TRAIN_BYTES = 100_000_000  # characters a BPE is trained on by default (spread over the documents)
# A cut between a line ending in a non-space character and a line starting with one ("...word\n|Next...") is
# one that GPT-2's and GPT-4's split patterns (and a character tokenizer) never join across: the pieces encode,
# one by one, to the tokens the whole text encodes to.
SAFE_CUT = re.compile(r"\S\n\S")


@dataclasses.dataclass(frozen=True)
class Document:
    """One input file, as the first pass found it."""

    path: Path
    bytes: int  # of the file as given (.gz: compressed)
    sha256: str  # of the file as given
    chars: int  # characters of its normalized text
    text_bytes: int  # UTF-8 bytes of its normalized text
    split_at: int  # characters of it that train (the rest validates)


# -- reading inputs ----------------------------------------------------------------------------------------------


def find_inputs(patterns: Sequence[str], what: str = "INPUT",
                owned: Callable[[Path], bool] = lambda path: False) -> list[Path]:
    """Files named by `patterns` (files, directories searched recursively, globs), each sorted. A path that
    exists is taken literally, even with glob characters in its name. Files for which `owned` is true (prepare's
    own output) are skipped in directories and globs, and refused when named. UsageError for a missing file, a
    glob matching nothing, a file named twice, or one that is not a regular file (a pipe, a device)."""
    paths: list[Path] = []
    for pattern in patterns:
        if Path(pattern).exists():
            matches = [Path(pattern)]
        elif glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [m for m in matches if not owned(m)]
            if not matches:
                raise UsageError(f"no file matches {what} {pattern!r}")
        else:
            raise UsageError(f"{what} {pattern!r} does not exist")
        for match in matches:
            if match.is_dir():
                paths.extend(sorted(p for p in match.rglob("*") if p.is_file() and not owned(p)))
            elif owned(match):
                raise UsageError(f"{what} {str(match)!r} is prepare's own output (--out); it is never an input")
            elif not match.is_file():
                raise UsageError(f"{what} {str(match)!r} is not a regular file (a pipe or a device); save it to a "
                                 "file and prepare that")
            else:
                paths.append(match)
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise UsageError(f"{path} is given twice; each input is one document")
        seen.add(path.resolve())
    if not paths:
        raise UsageError(f"{what} {' '.join(patterns)} holds no files")
    return paths


class _HashingReader:
    """A binary file that hashes the bytes read from it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def finish(self) -> str:
        while self.read(READ_BYTES):
            pass
        return self.sha256.hexdigest()


def read_text_chunks(path: Path, reader: _HashingReader | None = None) -> Iterator[str]:
    """The text of `path` in pieces, normalized as `data.read_text` does (a leading byte-order mark dropped,
    \\r\\n and \\r as \\n), in bounded memory; .gz files are decompressed. UsageError at the first byte that is
    not UTF-8, or is NUL (token files and other binary files), naming its offset."""
    raw = reader if reader is not None else open(path, "rb")  # noqa: SIM115 (closed below)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
    decoder, consumed, carry, first = codecs.getincrementaldecoder("utf-8")(), 0, "", True
    try:
        while True:
            try:
                data = stream.read(READ_BYTES)
            except (OSError, EOFError) as err:  # a damaged .gz, a failing disk
                raise UsageError(f"cannot read {path}: {err}") from None
            where = " of its uncompressed text" if stream is not raw else ""
            if (nul := data.find(b"\0")) >= 0:
                raise UsageError(f"{path} is not text (a NUL byte at offset {consumed + nul:,}{where}); prepare "
                                 "takes text files") from None
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise UsageError(f"{path} is not UTF-8 text (bad byte at offset {consumed - buffered + err.start:,}"
                                 f"{where}); convert it to UTF-8") from None
            consumed += len(data)
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            text = carry + text
            carry = "\r" if data and text.endswith("\r") else ""  # it may start a \r\n split across reads
            text = (text[:-1] if carry else text).replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not data:
                return
    finally:
        if reader is None:
            raw.close()


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[_HashingReader]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    with raw:
        yield _HashingReader(raw)


def _scan(path: Path, collect_chars: set[str] | None, bar: tqdm) -> Document:
    """One input read through: its size, sha256, characters and text bytes (checking it is UTF-8); adds its
    characters to `collect_chars`. Its split_at is all of it."""
    with _open_input(path) as reader:
        chars, text_bytes, shown = 0, 0, 0
        for text in read_text_chunks(path, reader):
            chars += len(text)
            text_bytes += len(text.encode("utf-8"))
            if collect_chars is not None:
                collect_chars.update(text)
            bar.update(reader.bytes - shown)
            shown = reader.bytes
        sha256 = reader.finish()
        bar.update(reader.bytes - shown)
        return Document(path, reader.bytes, sha256, chars, text_bytes, chars)


def cut_pieces(chunks: Iterable[str], size: int = PIECE_CHARS, max_size: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """The text of `chunks` re-cut into pieces of at least `size` characters (but the last) at safe cuts
    (SAFE_CUT), so that encoding the pieces one by one gives the whole text's tokens. Text with no safe cut for
    `max_size` characters (one enormous line) is cut there anyway: only that seam may encode differently."""
    parts, held = [], 0
    for chunk in chunks:
        parts.append(chunk)
        held += len(chunk)
        if held < size:
            continue
        text, start = "".join(parts), 0
        while len(text) - start >= size:
            match = SAFE_CUT.search(text, start + size - 1)
            if match is not None:
                end = match.start() + 2
            elif len(text) - start >= max_size:
                end = start + max_size
            else:
                break
            yield text[start:end]
            start = end
        parts, held = [text[start:]], len(text) - start
    if held:
        yield "".join(parts)


def _document_parts(doc: Document) -> Iterator[tuple[str, str]]:
    """(split, text) chunks of one document: its first `split_at` characters train, the rest validate. Read to
    its end, a document that is no longer what the first pass read (written to meanwhile) is a UsageError."""
    seen = 0
    with _open_input(doc.path) as reader:
        for text in read_text_chunks(doc.path, reader):
            cut = min(max(doc.split_at - seen, 0), len(text))
            if cut:
                yield "train", text[:cut]
            if cut < len(text):
                yield "val", text[cut:]
            seen += len(text)
        if reader.finish() != doc.sha256:
            raise UsageError(f"{doc.path} changed while prepare read it ({doc.bytes:,} bytes, then {reader.bytes:,}); "
                             "prepare it again once nothing writes to it")


def _train_text(doc: Document) -> Iterator[str]:
    return (text for _, text in itertools.takewhile(lambda part: part[0] == "train", _document_parts(doc)))


# -- the tokenizer ------------------------------------------------------------------------------------------------


def _bpe_sample(docs: list[Document], budget: int) -> Iterator[str]:
    """About `budget` characters of training text, spread over the documents: each gives the start of its
    training part in proportion to that part's size."""
    total = sum(doc.split_at for doc in docs)
    for doc in docs:
        share = math.ceil(budget * doc.split_at / max(total, 1))
        taken = 0
        for piece in cut_pieces(_train_text(doc)):
            if taken >= share:
                break
            yield piece[: share - taken]
            taken += len(piece)


def _make_tokenizer(kind: str, vocab_size: int | None, train_docs: list[Document], chars: set[str],
                    train_bytes: int, log: Callable[[str], None]) -> Tokenizer:
    """The char or bpe tokenizer (`kind`, checked by `_check_args`): characters of all inputs, or a BPE of
    `vocab_size` trained on the training parts."""
    if kind == "char":
        return CharTokenizer(tuple(sorted(chars)))
    log(f"training a BPE of {vocab_size} tokens on up to {train_bytes / 1e6:g}M characters of the training text")
    try:
        return train_bpe(_bpe_sample(train_docs, train_bytes), vocab_size)
    except UsageError:
        total = sum(doc.split_at for doc in train_docs)
        if train_bytes >= total:
            raise  # the text itself is too short
        raise UsageError(f"--tokenizer_train_bytes={train_bytes:,} gives the BPE too little text for {vocab_size} "
                         f"tokens ({train_bytes:,} of the {total:,} training characters); raise it (default "
                         f"{TOKENIZER_TRAIN_BYTES:,}) or lower --vocab_size") from None


# -- writing -------------------------------------------------------------------------------------------------------


class _TokenFile:
    """A token file being written: its count and sha256 kept as it grows."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.tokens, self.text_bytes, self.sha256 = path, dtype, 0, 0, hashlib.sha256()
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())

    def append(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        write_tokens(self.file, data)
        self.sha256.update(data)
        self.tokens += len(ids)

    def close(self) -> None:
        self.file.close()


def write_tokens(file: BinaryIO, data: bytes) -> None:
    """The one place token bytes reach the disk (tests make it fail as a full disk would)."""
    file.write(data)


def _pieces(docs: list[Document]) -> Iterator[tuple[str, str, bool]]:
    """(split, piece, whether it ends the document's part in that split) for every document, in order."""
    for doc in docs:
        for split, parts in itertools.groupby(_document_parts(doc), key=lambda part: part[0]):
            pieces = cut_pieces(text for _, text in parts)
            piece = next(pieces)  # a group holds text, so at least one piece
            for following in pieces:
                yield split, piece, False
                piece = following
            yield split, piece, True


def _encode_in_order(tokenizer: Tokenizer, pieces: Iterable[tuple[str, str, bool]], files: dict[str, _TokenFile],
                     bar: tqdm, batch: int) -> None:
    """Encode pieces `batch` at a time with `tokenizer.encode_batch` (on every core) while the next batch is
    read, appending each piece's tokens, in order, to its split's file, and the end-of-text token (bpe, gpt2)
    after each document's part."""
    eot = None if tokenizer.eot_id is None else np.array([tokenizer.eot_id])

    def write(job: concurrent.futures.Future, items: list[tuple[str, str, bool]]) -> None:
        for (split, text, last), ids in zip(items, job.result(), strict=True):
            files[split].append(ids)
            if last and eot is not None:
                files[split].append(eot)
            nbytes = len(text.encode("utf-8"))
            files[split].text_bytes += nbytes
            bar.update(nbytes)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = None
        for items in _batched(pieces, batch):
            job = pool.submit(tokenizer.encode_batch, [text for _, text, _ in items])
            if pending is not None:
                write(*pending)
            pending = job, list(items)
        if pending is not None:
            write(*pending)


def _batched(items: Iterable, n: int) -> Iterator[tuple]:  # itertools.batched, from Python 3.12 on
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, n)):
        yield batch


# -- prepare ---------------------------------------------------------------------------------------------------------


def _check_args(kind: str, vocab_size: int | None, dtype: str, val_fraction: float | None, has_val: bool,
                train_bytes: int) -> float:
    """The flags' own checks, before any input is read; returns the val fraction to use (0 with --val)."""
    if kind not in ("char", "bpe", "gpt2"):
        raise UsageError(f"--tokenizer must be char, bpe or gpt2, got {kind!r}")
    if kind != "bpe" and vocab_size is not None:
        raise UsageError(f"--vocab_size is for --tokenizer=bpe; {kind}'s vocabulary is fixed")
    if kind == "bpe" and vocab_size is None:
        raise UsageError("--tokenizer=bpe needs --vocab_size=N (e.g. 2048)")
    if dtype not in ("auto", *DTYPES):
        raise UsageError(f"--dtype must be auto, uint16 or uint32, got {dtype!r}")
    if vocab_size is not None and dtype != "auto":
        _check_dtype(vocab_size, dtype)
    if train_bytes < 1:
        raise UsageError(f"--tokenizer_train_bytes must be >= 1, got {train_bytes}")
    if has_val and val_fraction is not None:
        raise UsageError("give --val_fraction or --val, not both")
    fraction = 0.0 if has_val else 0.1 if val_fraction is None else val_fraction
    if not has_val and not 0 < fraction < 1:
        raise UsageError(f"--val_fraction must be in (0, 1), got {fraction}")
    return fraction


def _check_dtype(vocab_size: int, dtype: str) -> None:
    if vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise UsageError(f"vocab_size {vocab_size} does not fit --dtype={dtype} (at most "
                         f"{np.iinfo(DTYPES[dtype]).max + 1} tokens); use --dtype=uint32 or auto")


def _version() -> str:
    try:
        return importlib.metadata.version("jaxgpt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def prepare(inputs: Sequence[str], out: str | os.PathLike, tokenizer: str = "char", vocab_size: int | None = None,
            val_fraction: float | None = None, val_inputs: Sequence[str] = (), dtype: str = "auto",
            overwrite: bool = False, tokenizer_train_bytes: int = TOKENIZER_TRAIN_BYTES, progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Tokenize `inputs` (files, directories, globs, .gz; one document per file) into the directory `out`;
    returns its meta.json.

    Validation text is the last `val_fraction` (default 0.1) of each document, from character
    int((1 - val_fraction) * n) of its normalized text on, or all of `val_inputs` (then the inputs all train).
    `tokenizer` is "char" (all inputs' distinct characters), "bpe" (`vocab_size` tokens trained on up to
    `tokenizer_train_bytes` characters of the training parts) or "gpt2". Two passes over the inputs (a check
    and count, then encoding) in bounded memory; the directory appears complete or not at all.
    """
    fraction = _check_args(tokenizer, vocab_size, dtype, val_fraction, bool(val_inputs), tokenizer_train_bytes)
    with Destination(out, overwrite, log) as destination:
        gpt2 = gpt2_tokenizer() if tokenizer == "gpt2" else None  # before reading: offline, it fails at once
        train_paths = find_inputs(inputs, owned=destination.owns)
        val_paths = find_inputs(val_inputs, "--val", owned=destination.owns) if val_inputs else []
        if both := {p.resolve() for p in train_paths} & {p.resolve() for p in val_paths}:
            raise UsageError(f"{sorted(both)[0]} is both a training input and a --val input")
        chars: set[str] | None = set() if tokenizer == "char" else None
        docs = _documents(train_paths, val_paths, fraction, chars, progress)
        tok = gpt2 or _make_tokenizer(tokenizer, vocab_size, [d for d in docs if d.split_at], chars or set(),
                                      tokenizer_train_bytes, log)
        dtype_name = dtype if dtype != "auto" else "uint16" if tok.vocab_size <= 65536 else "uint32"
        _check_dtype(tok.vocab_size, dtype_name)
        try:
            staging = destination.staging()
            meta = _write(staging, docs, val_paths, tok, dtype_name, fraction, progress)
            destination.commit()
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise UsageError(f"prepare failed: {err.strerror or err}{where}; nothing was written to {out}") from None
    return meta


def _progress(desc: str, total: int, progress: bool) -> tqdm:
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, file=sys.stderr, disable=not progress,
                dynamic_ncols=True)


def _documents(train_paths: list[Path], val_paths: list[Path], fraction: float, chars: set[str] | None,
               progress: bool) -> list[Document]:
    """The first pass: every input checked and counted (its characters added to `chars`), with its split."""
    with _progress("checking", sum(p.stat().st_size for p in train_paths + val_paths), progress) as bar:
        scanned = [_scan(path, chars, bar) for path in train_paths + val_paths]
    val_set = set(val_paths)
    docs = [dataclasses.replace(doc, split_at=0 if doc.path in val_set else doc.chars if val_set else
                                int((1 - fraction) * doc.chars)) for doc in scanned]
    train_chars, val_chars = sum(d.split_at for d in docs), sum(d.chars - d.split_at for d in docs)
    if train_chars == 0:
        raise UsageError(f"the train split is empty: the inputs hold {sum(d.chars for d in docs)} characters")
    if val_chars == 0:
        raise UsageError("the val split is empty: " + ("the --val inputs hold no text" if val_paths else
                         f"--val_fraction={fraction} of {train_chars} characters leaves none to validate"))
    return docs


def _write(staging: Path, docs: list[Document], val_paths: list[Path], tok: Tokenizer, dtype_name: str,
           fraction: float, progress: bool) -> dict:
    """The second pass: the documents encoded into `staging`'s token files, then meta.json (last: it marks the
    directory complete); returns meta.json."""
    (staging / TOKENIZER).write_text(tok.to_json(), encoding="utf-8")
    files = {"train": _TokenFile(staging / TRAIN, DTYPES[dtype_name]),
             "val": _TokenFile(staging / VAL, DTYPES[dtype_name])}
    try:
        with _progress("encoding", sum(d.text_bytes for d in docs), progress) as bar:
            _encode_in_order(tok, _pieces(docs), files, bar, batch=2 * (os.cpu_count() or 1))
    finally:
        for file in files.values():
            file.close()
    meta = {
        "format": FORMAT, "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "dtype": dtype_name,
        "eot_id": tok.eot_id, "train_tokens": files["train"].tokens, "val_tokens": files["val"].tokens,
        "train_bytes": files["train"].text_bytes, "val_bytes": files["val"].text_bytes, "documents": len(docs),
        "val_fraction": fraction or None,
        "inputs": [_input_record(d) for d in docs if d.path not in val_paths],
        **({"val_inputs": [_input_record(d) for d in docs if d.path in val_paths]} if val_paths else {}),
        "sha256": {TRAIN: files["train"].sha256.hexdigest(), VAL: files["val"].sha256.hexdigest(),
                   TOKENIZER: file_sha256(staging / TOKENIZER)},
        "jaxgpt_version": _version(),
    }
    (staging / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _input_record(doc: Document) -> dict:
    return {"path": str(doc.path), "bytes": doc.bytes, "sha256": doc.sha256}
