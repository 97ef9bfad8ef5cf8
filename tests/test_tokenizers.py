"""jaxgpt.data.tokenizers: each kind round-trips text and its JSON, counts bytes, and loads with no network."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import requests
import tiktoken
import tiktoken.load
import tiktoken.registry

from jaxgpt import CharTokenizer
from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.model import init_params
from jaxgpt.data.tokenizers import (
    EOT,
    BPETokenizer,
    TiktokenTokenizer,
    describe,
    gpt2_tokenizer,
    load_tokenizer,
    tokenizer_from_json,
    train_bpe,
)
from jaxgpt.sample import main as sample_main
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError
from jaxgpt.weights.convert import write_run_dir

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TEXTS = ["", "First Citizen:\nBefore we proceed", "héllo wörld ☃ 🎉\n\n  x", "<|endoftext|> is text here", "a" * 300]


def tiny_encoding() -> tiktoken.Encoding:
    """A tiktoken Encoding built offline: the 256 bytes, four merges and the end-of-text token."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({b"th": 256, b"the": 257, b" the": 258, b"er": 259})
    return tiktoken.Encoding("tiny", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 260})


@pytest.fixture(scope="module")
def bpe(shakespeare_text) -> BPETokenizer:
    return train_bpe([shakespeare_text[:100_000]], 512)


def test_char_kind_is_the_lecture_tokenizer_and_its_batch_path_agrees(shakespeare_text):
    text = shakespeare_text[:5000]
    tok = CharTokenizer.from_text(text)
    assert tok.kind == "char" and tok.eot_id is None and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids[:5] == [sorted(set(text)).index(ch) for ch in text[:5]]
    (batch,) = tok.encode_batch([text])
    assert batch.dtype == np.int32 and batch.tolist() == ids
    assert tok.decode(batch) == text
    with pytest.raises(UsageError, match=r"characters not in the vocabulary: '☃'"):
        tok.encode_batch(["abc", text[:10] + "☃"])


def test_token_bytes_count_utf8_bytes(bpe):
    char = CharTokenizer.from_text("aé☃")
    assert char.token_bytes().tolist() == [1, 2, 3]
    text = "héllo wörld ☃ 🎉 The king's men\n"
    sizes = bpe.token_bytes()
    assert sizes.shape == (512,) and sizes.dtype == np.int32 and sizes[bpe.eot_id] == 0
    assert sizes[bpe.encode(text)].sum() == len(text.encode("utf-8"))
    assert sizes[:256].tolist() == [1] * 256 and sizes.max() > 1


@pytest.mark.parametrize("vocab_size", [257, 512, 2048])
def test_bpe_has_the_vocab_size_asked_for(shakespeare_text, vocab_size):
    tok = train_bpe([shakespeare_text[:200_000]], vocab_size)
    assert tok.kind == "bpe" and tok.vocab_size == vocab_size and tok.eot_id == vocab_size - 1
    ids = tok.encode(shakespeare_text[:20_000])
    assert max(ids) < vocab_size - 1
    assert len(ids) < 20_000 or vocab_size == 257  # merges shorten the text


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trips_any_text(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.eot_id not in ids  # "<|endoftext|>" in the text is ordinary text
    assert [a.tolist() for a in bpe.encode_batch([text, text])] == [ids, ids]


def test_bpe_sizes_out_of_range_or_beyond_the_text_are_refused():
    with pytest.raises(UsageError, match=r"vocab_size must be in \[257, "):
        train_bpe(["some text"], 256)
    with pytest.raises(UsageError, match="enough pairs for .* BPE tokens, not 1000"):
        train_bpe(["abcabc"], 1000)


def test_eot_decodes_to_its_name(bpe):
    assert bpe.decode([bpe.eot_id, *bpe.encode("Hi")]) == EOT + "Hi"


def test_json_round_trip_of_every_kind(bpe, tmp_path):
    char = CharTokenizer.from_text("hello, world")
    tiny = TiktokenTokenizer.from_encoding(tiny_encoding())
    for tok in (char, bpe, tiny):
        again = tokenizer_from_json(tok.to_json())
        assert type(again) is type(tok) and again == tok and again.fingerprint() == tok.fingerprint()
        assert json.loads(tok.to_json())["kind"] == tok.kind
        path = tmp_path / f"{tok.kind}.json"
        path.write_text(tok.to_json())
        assert load_tokenizer(path) == tok
    assert len({char.fingerprint(), bpe.fingerprint(), tiny.fingerprint()}) == 3
    legacy = tokenizer_from_json('{"chars": " ,dehlorw"}')
    assert legacy == char and legacy.fingerprint() == char.fingerprint()


def test_a_tiny_tiktoken_encoding_encodes_like_tiktoken_after_a_json_trip():
    encoding = tiny_encoding()
    tok = tokenizer_from_json(TiktokenTokenizer.from_encoding(encoding).to_json())
    assert tok.kind == "tiktoken" and tok.vocab_size == 261 and tok.eot_id == 260
    for text in [*TEXTS, "the other brother thether"]:
        assert tok.encode(text) == encoding.encode_ordinary(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" the") == [258]


@pytest.mark.parametrize("content, message", [
    ('{"kind": "words"}', "unknown tokenizer kind 'words'"),
    ('{"kind": "bpe", "name": "x", "pattern": "a", "special_tokens": {"<|endoftext|>": 1}, "ranks": ["YQ=="]}',
     "lack 255 of the 256 single bytes"),
    ("[1, 2]", "unknown tokenizer kind None"),
    ("not json", "JSONDecodeError"),
])
def test_bad_tokenizer_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=f"{path} is not a valid tokenizer file .*{message}") as err:
        load_tokenizer(path)
    assert "\n" not in str(err.value)


def test_special_tokens_must_follow_the_ranks():
    ranks = [bytes([i]) for i in range(256)]
    with pytest.raises(ValueError, match="distinct ids from 256 on"):
        TiktokenTokenizer("x", GPT2_PATTERN, ranks, {EOT: 10})
    with pytest.raises(ValueError, match="distinct ids"):
        TiktokenTokenizer("x", GPT2_PATTERN, ranks, {"<|a|>": 300})  # no end-of-text token


def test_gpt2_offline_and_not_cached_is_one_clear_error(tmp_path, monkeypatch):
    def offline(url):
        raise requests.ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    with pytest.raises(UsageError, match="GPT-2's encoding is not in tiktoken's cache .*TIKTOKEN_CACHE_DIR") as err:
        gpt2_tokenizer()
    assert "\n" not in str(err.value)


def test_gpt2_tokenizer_saves_the_encoding_it_gets(monkeypatch):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: tiny_encoding())
    tok = gpt2_tokenizer()
    assert tok.kind == "tiktoken" and tok.eot_id == 260 and tok.ranks[258] == b" the"


def test_runs_with_a_bpe_tokenizer_load_and_sample_from_end_of_text(bpe, tmp_path, capsys):
    model = GPTConfig(vocab_size=bpe.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    params = init_params(model, jax.random.key(0))
    write_run_dir(tmp_path / "run", TrainConfig(model=model, out_dir=str(tmp_path / "run")), params, bpe, False)
    assert RunDir(tmp_path / "run").read_tokenizer() == bpe
    config, _, tokenizer = checkpoint.load(tmp_path / "run")
    assert tokenizer == bpe and config.model.vocab_size == 512
    sample_main(["--out_dir", str(tmp_path / "run"), "--num_samples=1", "--max_new_tokens=4"])
    assert capsys.readouterr().out.startswith(EOT)


def test_checkpoint_load_counts_tokens_when_the_vocab_differs(bpe, tmp_path):
    model = GPTConfig(vocab_size=bpe.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    write_run_dir(tmp_path / "run", TrainConfig(model=model), init_params(model, jax.random.key(0)), bpe, False)
    RunDir(tmp_path / "run").write_tokenizer(CharTokenizer.from_text("abc"))
    with pytest.raises(UsageError, match="tokenizer.json has 3 tokens but the model expects vocab_size 512"):
        checkpoint.load(tmp_path / "run")


def test_two_tokenizers_that_read_alike_are_told_apart(shakespeare_text):
    """"a BPE of 300 tokens but ... a BPE of 300 tokens" names no difference: their fingerprints do."""
    first, second = train_bpe([shakespeare_text[:50_000]], 300), train_bpe([shakespeare_text[50_000:100_000]], 300)
    assert describe(first) == describe(second) == "a BPE of 300 tokens"
    assert describe(first, second) == f"a BPE of 300 tokens (fingerprint {first.fingerprint()[:8]})"
    assert describe(second, first) == f"a BPE of 300 tokens (fingerprint {second.fingerprint()[:8]})"
    assert describe(first, first) == "a BPE of 300 tokens"
    assert describe(CharTokenizer(tuple("ab")), CharTokenizer(tuple("xy"))).startswith("character tokens (2) (")
