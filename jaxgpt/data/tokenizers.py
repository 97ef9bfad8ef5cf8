"""Tokenizers: the lecture's characters, a byte-level BPE trained on your text, and GPT-2's encoding.

Every kind saves to one JSON format, `{"kind": ..., ...}`, that holds all it needs to encode and decode with no
network (tokenizer.json in run and data directories). BPE is trained with rustbpe and, like GPT-2's encoding,
run by tiktoken (benchmarks/RESULTS.md, "Tokenizers", has the measurements behind that choice).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import tiktoken

from jaxgpt.system.errors import UsageError

TOKENIZER_FILE = "tokenizer.json"  # a tokenizer's file in run and prepared-data directories
EOT = "<|endoftext|>"  # the end-of-text token put between documents
# rustbpe's default split pattern (GPT-4's, numbers in runs of up to 3), written out so a saved BPE never depends
# on a library default.
BPE_PATTERN = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"
               r"\s+(?!\S)|\s+")
MAX_VOCAB = 2**31 - 1  # ids are int32 in jaxgpt


class Tokenizer(Protocol):
    """What training, sampling and prepare need of a tokenizer; ids are in [0, vocab_size)."""

    kind: str  # "char" | "bpe" | "tiktoken"
    vocab_size: int
    eot_id: int | None  # put between documents; None for char

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids of each text, equal to `encode`'s; on every core where the library can."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int32: the UTF-8 bytes each token stands for; 0 for special tokens."""
        ...

    def to_json(self) -> str: ...

    def fingerprint(self) -> str:
        """sha256 of `to_json()`: equal iff the same tokenizer."""
        ...


def _fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """The lecture's character-level tokenizer: token i is the i-th of the sorted distinct characters."""

    chars: tuple[str, ...]
    kind: ClassVar[str] = "char"
    eot_id: ClassVar[None] = None

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(tuple(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    @property
    def itos(self) -> dict[int, str]:
        return dict(enumerate(self.chars))

    @functools.cached_property
    def _codes(self) -> np.ndarray:  # (V,) uint32 code points, sorted as the chars are
        return np.array([ord(ch) for ch in self.chars], dtype=np.uint32)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        unknown = sorted(set(text) - stoi.keys())
        if unknown:
            raise UsageError(f"characters not in the vocabulary: {''.join(unknown)!r} ({len(unknown)} distinct)")
        return [stoi[ch] for ch in text]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Like `encode`, by a sorted lookup of code points in numpy (fast for long texts)."""
        out = []
        for text in texts:
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (n,)
            ids = np.minimum(np.searchsorted(self._codes, points), self.vocab_size - 1)
            if not np.array_equal(self._codes[ids], points):
                self.encode(text)  # raises, naming the unknown characters
            out.append(ids.astype(np.int32))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(ch.encode("utf-8")) for ch in self.chars], dtype=np.int32)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": "".join(self.chars)}, ensure_ascii=False)

    def fingerprint(self) -> str:
        return _fingerprint(self)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """A tokenizer saved by `to_json` (or the older `{"chars": ...}`); ValueError unless it holds distinct
        characters in sorted order."""
        chars = json.loads(text)["chars"]
        if not isinstance(chars, str) or not chars:
            raise ValueError("'chars' must be a non-empty string")
        if list(chars) != sorted(set(chars)):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            problem = f"repeats {''.join(repeated)!r}" if repeated else "is not sorted"
            raise ValueError(f"its character list {problem}; a vocabulary holds each character once, sorted")
        return cls(tuple(chars))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


class TiktokenTokenizer:
    """A byte-level BPE run by tiktoken: its merges as ranked byte strings, its split pattern and its special
    tokens. Text is encoded as ordinary text (an "<|endoftext|>" inside it is not the special token)."""

    kind: ClassVar[str] = "tiktoken"

    def __init__(self, name: str, pattern: str, ranks: Sequence[bytes], special_tokens: Mapping[str, int]):
        """`ranks[i]` is the byte string of token i (all 256 single bytes among them); special tokens take ids
        from len(ranks) on. ValueError if these do not make a tokenizer."""
        ranks, special_tokens = tuple(ranks), dict(special_tokens)
        if len(set(ranks)) != len(ranks):
            raise ValueError("its ranks repeat a token")
        if missing := len(set(range(256)) - {r[0] for r in ranks if len(r) == 1}):
            raise ValueError(f"its ranks lack {missing} of the 256 single bytes")
        ids = sorted(special_tokens.values())
        if EOT not in special_tokens or len(set(ids)) != len(ids) or ids[0] < len(ranks) or ids[-1] > MAX_VOCAB:
            raise ValueError(f"its special tokens must include {EOT} and have distinct ids from {len(ranks)} on")
        self.name, self.pattern, self.ranks, self.special_tokens = name, pattern, ranks, special_tokens
        self.encoding = tiktoken.Encoding(name, pat_str=pattern, special_tokens=special_tokens,
                                          mergeable_ranks={token: i for i, token in enumerate(ranks)})
        self.vocab_size = ids[-1] + 1
        self.eot_id = special_tokens[EOT]

    @classmethod
    def from_encoding(cls, encoding: tiktoken.Encoding) -> TiktokenTokenizer:
        """A tiktoken Encoding with an "<|endoftext|>" token, as a tokenizer that saves all of it."""
        specials = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
        n_ranks = min(specials.values(), default=encoding.n_vocab)
        ranks = [encoding.decode_single_token_bytes(i) for i in range(n_ranks)]
        return cls(encoding.name, encoding._pat_str, ranks, specials)  # tiktoken has no public getter for it

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32)
                for ids in self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; a character cut by the end of `ids` becomes U+FFFD."""
        return self.encoding.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        out[: len(self.ranks)] = [len(token) for token in self.ranks]
        return out

    @functools.cached_property
    def _json(self) -> str:
        return json.dumps({"kind": self.kind, "name": self.name, "pattern": self.pattern,
                           "special_tokens": self.special_tokens,
                           "ranks": [base64.b64encode(token).decode("ascii") for token in self.ranks]})

    def to_json(self) -> str:
        return self._json

    def fingerprint(self) -> str:
        return _fingerprint(self)

    @classmethod
    def from_dict(cls, obj: dict) -> TiktokenTokenizer:
        ranks = [base64.b64decode(token, validate=True) for token in obj["ranks"]]
        return cls(str(obj["name"]), str(obj["pattern"]), ranks, {str(k): int(v) for k, v in
                                                                   obj["special_tokens"].items()})


class BPETokenizer(TiktokenTokenizer):
    """A byte-level BPE trained on the user's text (`train_bpe`); the end-of-text token is the last id."""

    kind: ClassVar[str] = "bpe"


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """A byte-level BPE of `vocab_size` tokens (the 256 bytes, vocab_size - 257 merges and the end-of-text
    token) trained with rustbpe on `texts`; UsageError if the text is too small for that many merges."""
    import rustbpe  # only needed to train

    if not 257 <= vocab_size <= MAX_VOCAB:
        raise UsageError(f"a BPE vocab_size must be in [257, {MAX_VOCAB}] (256 bytes and the end-of-text token), "
                         f"got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - 1, pattern=BPE_PATTERN)
    ranks = [bytes(token) for token, _ in sorted(trainer.get_mergeable_ranks(), key=lambda pair: pair[1])]
    if len(ranks) != vocab_size - 1:
        raise UsageError(f"the text has only enough pairs for {len(ranks) + 1} BPE tokens, not {vocab_size}; "
                         "give more text or a smaller --vocab_size")
    return BPETokenizer("bpe", BPE_PATTERN, ranks, {EOT: len(ranks)})


def gpt2_tokenizer() -> TiktokenTokenizer:
    """GPT-2's encoding (50257 tokens) from tiktoken, which downloads its files once into its cache
    ($TIKTOKEN_CACHE_DIR, else $TMPDIR/data-gym-cache); offline and not cached, a UsageError says how to get it."""
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as err:  # requests' errors are OSErrors; ValueError: a damaged download
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UsageError(f"GPT-2's encoding is not in tiktoken's cache and could not be downloaded ({reason}); run "
                         "`python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` once with internet and set "
                         "TIKTOKEN_CACHE_DIR to that cache here (it holds vocab.bpe and encoder.json)") from None
    return TiktokenTokenizer.from_encoding(encoding)


KINDS: dict[str, type] = {"char": CharTokenizer, "bpe": BPETokenizer, "tiktoken": TiktokenTokenizer}


def describe(tokenizer: Tokenizer, unlike: Tokenizer | None = None) -> str:
    """A tokenizer in a few words, for messages: "character tokens (65)", "a BPE of 512 tokens". Where `unlike` is
    another tokenizer those words would also describe, the start of its file's sha256 tells them apart."""
    if tokenizer.kind == "tiktoken":
        words = f"GPT-2's encoding ({tokenizer.vocab_size} tokens)"
    elif tokenizer.kind == "bpe":
        words = f"a BPE of {tokenizer.vocab_size} tokens"
    else:
        words = f"character tokens ({tokenizer.vocab_size})"
    if unlike is not None and describe(unlike) == words and unlike.fingerprint() != tokenizer.fingerprint():
        words += f" (fingerprint {tokenizer.fingerprint()[:8]})"
    return words


def tokenizer_from_json(text: str) -> Tokenizer:
    """Any kind saved by `to_json`; the older `{"chars": ...}` (no "kind") is a character tokenizer. ValueError,
    KeyError or TypeError for anything else."""
    obj = json.loads(text)
    kind = obj.get("kind", "char") if isinstance(obj, dict) else None
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "char":
        return CharTokenizer.from_json(text)
    return KINDS[kind].from_dict(obj)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved at `path` (`path.write_text(tok.to_json())`); UsageError if it is not one."""
    try:
        return tokenizer_from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a valid tokenizer file ({type(err).__name__}: {err})") from None


def default_prompt(tokenizer: Tokenizer) -> list[int]:
    """Where a sample starts without a prompt: token 0 for characters (the lecture's start, a newline in
    Shakespeare), else the end-of-text token (the start of a document)."""
    return [0] if tokenizer.eot_id is None else [tokenizer.eot_id]
