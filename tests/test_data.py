from __future__ import annotations

import hashlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxgpt.core.model import check_tokens
from jaxgpt.data import text as data
from jaxgpt.data.batches import get_batch
from jaxgpt.data.text import load_dataset, read_text, resolve_data_path, train_val_split
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.data.writer import prepare
from jaxgpt.system.errors import UsageError


def test_tokenizer_matches_lecture(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == 65
    assert tok.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]
    assert tok.decode(tok.encode("hii there")) == "hii there"
    assert "".join(tok.chars) == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@given(st.text(min_size=1))
def test_tokenizer_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UsageError, match=r"'xz'"):
        tok.encode("axbz")


def test_tokenizer_save_load(tmp_path):
    tok = CharTokenizer.from_text("héllo\nwörld\t")
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json") == tok


def test_split_is_first_90_percent():
    tokens = np.arange(1000, dtype=np.int32)
    train, val = train_val_split(tokens, block_size=8)
    assert len(train) == 900 and train[-1] == 899 and val[0] == 900


def test_split_too_short_for_block_size():
    with pytest.raises(UsageError, match=r"val split has 10 tokens .* block_size 10"):
        train_val_split(np.arange(100, dtype=np.int32), block_size=10)


def test_batches_are_shifted_by_one_and_seeded():
    tokens = jnp.arange(500, dtype=jnp.int32)
    x, y = get_batch(jax.random.key(0), tokens, batch_size=4, block_size=8)
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], x[:, -1] + 1)
    x2, _ = get_batch(jax.random.key(0), tokens, batch_size=4, block_size=8)
    np.testing.assert_array_equal(x, x2)
    x3, _ = get_batch(jax.random.key(1), tokens, batch_size=4, block_size=8)
    assert not np.array_equal(x, x3)


def test_batch_offsets_cover_the_last_window():
    tokens = jnp.arange(10, dtype=jnp.int32)  # offsets 0..1 possible with block_size 8
    x, y = get_batch(jax.random.key(3), tokens, batch_size=256, block_size=8)
    assert set(np.asarray(x[:, 0]).tolist()) == {0, 1}
    assert int(y.max()) == 9


def test_empty_and_undecodable_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UsageError, match="empty"):
        read_text(empty)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8.*offset 3"):
        read_text(binary)


def test_a_token_file_is_not_trained_on_as_text(tmp_path, small_text_file):
    """nanoGPT's habit, --data_path=DIR/train.bin: the directory is what to pass; any binary file is not text."""
    prepare([str(small_text_file)], tmp_path / "data", progress=False, log=lambda _: None)
    with pytest.raises(UsageError, match=rf"train.bin is a file of the prepared dataset in {tmp_path / 'data'}; "
                                         rf"train on the dataset: --data_path={tmp_path / 'data'}$"):
        load_dataset(tmp_path / "data" / "train.bin", 8)
    loose = tmp_path / "tokens.bin"
    loose.write_bytes((tmp_path / "data" / "train.bin").read_bytes())
    with pytest.raises(UsageError, match=r"tokens.bin is not text \(a NUL byte at offset 1\); give a UTF-8 text file, "
                                         r"or a prepared dataset's directory \(--data_path=DIR\)"):
        load_dataset(loose, 8)


def test_text_is_read_as_the_lecture_reads_it(tmp_path):
    """Python's text mode (the lecture's open(...).read()): \r\n and \r become \n; a UTF-8 BOM is not text."""
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeffFirst Citizen:\r\nBefore we proceed\ranyway\n".encode())
    text = read_text(path)
    assert text == "First Citizen:\nBefore we proceed\nanyway\n"
    with open(path, encoding="utf-8-sig") as f:  # what the lecture's open() gives, less the BOM
        assert text == f.read()
    assert CharTokenizer.from_text(text).vocab_size == len(set("First Citizen:\nBefore we proceed\nanyway\n"))


def test_tokenizer_files_hold_each_character_once_in_order():
    with pytest.raises(ValueError, match="repeats 'a'"):
        CharTokenizer.from_json('{"chars": "aab"}')
    with pytest.raises(ValueError, match="is not sorted"):
        CharTokenizer.from_json('{"chars": "ba"}')
    with pytest.raises(ValueError, match="non-empty string"):
        CharTokenizer.from_json('{"chars": ["a"]}')


def test_check_tokens_refuses_casts_and_checks_the_range_first():
    np.testing.assert_array_equal(check_tokens([[1, 2]], 3), np.array([[1, 2]], np.int32))
    for bad, message in [([[1.7]], "integer token ids, got float64"), ([[True]], "integer token ids, got bool"),
                         ("ab", "integer token ids, got str"), (np.array([2**33 + 5]), r"in \[0, 3\), got values"),
                         ([-1], r"in \[0, 3\), got values in \[-1, -1\]")]:
        with pytest.raises(UsageError, match=message):
            check_tokens(bad, 3)


def test_load_dataset_any_text(small_text_file):
    ds = load_dataset(small_text_file, block_size=16)
    assert len(ds.train) == 18_000 and len(ds.val) == 2_000
    assert ds.train.dtype == np.int32


def test_resolution_order(tmp_path, monkeypatch, small_text_file):
    env_file = tmp_path / "env.txt"
    env_file.write_text("from the environment")
    monkeypatch.setenv("JAXGPT_DATA", str(env_file))
    assert resolve_data_path(small_text_file) == small_text_file
    assert resolve_data_path(None) == env_file
    monkeypatch.setenv("JAXGPT_DATA", str(tmp_path / "missing.txt"))
    with pytest.raises(UsageError, match=r"\$JAXGPT_DATA points to .*missing.txt"):
        resolve_data_path(None)
    with pytest.raises(UsageError, match=r"--data_path points to"):
        resolve_data_path(tmp_path / "nope.txt")


def test_cache_then_verified_atomic_download(tmp_path, monkeypatch, shakespeare_path):
    payload = shakespeare_path.read_bytes()
    cache = tmp_path / "cache" / "input.txt"
    monkeypatch.delenv("JAXGPT_DATA", raising=False)
    monkeypatch.setattr(data, "cached_shakespeare_path", lambda: cache)
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    assert resolve_data_path(None) == cache
    assert calls == [data.SHAKESPEARE_URL]
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == data.SHAKESPEARE_SHA256
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left behind
    assert resolve_data_path(None) == cache and len(calls) == 1  # served from the cache


def test_corrupt_download_is_rejected(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "input.txt"
    monkeypatch.delenv("JAXGPT_DATA", raising=False)
    monkeypatch.setattr(data, "cached_shakespeare_path", lambda: cache)
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not shakespeare"))
    with pytest.raises(UsageError, match="sha256"):
        resolve_data_path(None)
    assert not cache.exists()


def test_offline_error_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXGPT_DATA", raising=False)
    monkeypatch.setattr(data, "cached_shakespeare_path", lambda: tmp_path / "input.txt")

    def offline(url, timeout):
        raise data.urllib.error.URLError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(UsageError, match=r"--data_path=FILE or set JAXGPT_DATA=FILE"):
        resolve_data_path(None)


def test_a_split_beyond_32_bit_offsets_is_refused_in_one_line():
    from jaxgpt.data.text import MAX_SPLIT_TOKENS, check_split_lengths

    huge = np.broadcast_to(np.zeros(1, np.uint16), (MAX_SPLIT_TOKENS + 1,))  # no memory: one element, repeated
    small = np.zeros(100, np.uint16)
    check_split_lengths(huge[:MAX_SPLIT_TOKENS], small, block_size=8)
    with pytest.raises(UsageError, match=r"^the train split has 2,147,483,648 tokens, more than the 2,147,483,647 "
                                         r"that 32-bit window offsets reach; prepare the corpus as several smaller "
                                         r"datasets$"):
        check_split_lengths(huge, small, block_size=8)
