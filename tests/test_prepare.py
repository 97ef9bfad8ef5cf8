"""python -m jaxgpt.prepare: exact token files from many inputs, streamed; open_prepared's checks; bad input."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tiktoken

from jaxgpt.cli import run_cli
from jaxgpt.data import writer as prep
from jaxgpt.data.prepared import open_prepared
from jaxgpt.data.text import read_text, train_val_split
from jaxgpt.data.tokenizers import EOT, CharTokenizer, TiktokenTokenizer, train_bpe
from jaxgpt.data.writer import cut_pieces, prepare, read_text_chunks
from jaxgpt.prepare import main
from jaxgpt.system.errors import UsageError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quiet(*args, **kwargs) -> dict:
    return prepare(*args, progress=False, log=lambda _: None, **kwargs)


@pytest.fixture(scope="module")
def bpe(shakespeare_text):
    return train_bpe([shakespeare_text[:100_000]], 300)


@pytest.fixture
def docs(tmp_path, shakespeare_text):
    """Four documents: a.txt, b.txt.gz and, in sub/, c.txt and d.txt (with CRLF lines and a byte-order mark)."""
    texts = {"a.txt": shakespeare_text[:3000], "b.txt.gz": shakespeare_text[3000:7000],
             "sub/c.txt": shakespeare_text[7000:9000], "sub/d.txt": "\ufeffOne\r\ntwo\rthree ☃\n" * 50}
    for name, text in texts.items():
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return tmp_path / "in", texts


def test_char_prepare_equals_the_on_device_split(tmp_path, small_text_file):
    """The exactness the trainer relies on: one char-tokenized file gives data.train_val_split's tokens."""
    meta = quiet([str(small_text_file)], tmp_path / "data")
    text = read_text(small_text_file)
    tokenizer = CharTokenizer.from_text(text)
    train, val = train_val_split(np.asarray(tokenizer.encode(text), np.int32), block_size=8)
    data = open_prepared(tmp_path / "data")
    assert data.tokenizer == tokenizer and data.train.dtype == np.uint16
    np.testing.assert_array_equal(data.train, train)
    np.testing.assert_array_equal(data.val, val)
    assert (meta["train_tokens"], meta["val_tokens"], meta["eot_id"]) == (len(train), len(val), None)


def nasty_texts(seed: int, n: int = 30) -> list[str]:
    """Texts of spaces, tabs, newlines, letters, digits, punctuation, apostrophes and non-ASCII in odd runs."""
    rng = np.random.default_rng(seed)
    atoms = ["\n", "\n\n", " ", "  ", "\t", "a", "The", "x'", "'s", "'ll", "42", "1234", ".", "!?", "é", "☃", "🎉",
             " \n", "\n ", ":\n", "  x"]
    return ["".join(rng.choice(atoms, size=rng.integers(50, 400))) for _ in range(n)]


@pytest.mark.parametrize("which", ["bpe", "gpt2-pattern", "char"])
def test_pieces_encode_to_the_whole_texts_tokens(bpe, shakespeare_text, which):
    if which == "char":
        tokenizer = CharTokenizer.from_text(shakespeare_text + "".join(nasty_texts(0)))
    elif which == "bpe":
        tokenizer = bpe
    else:
        ranks = {bytes([i]): i for i in range(256)} | {b"th": 256, b" t": 257, b"\n\n": 258, b"  ": 259}
        tokenizer = TiktokenTokenizer.from_encoding(tiktoken.Encoding(
            "tiny", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 260}))
    for text in [shakespeare_text[:20_000], *nasty_texts(1)]:
        chunks = [text[i: i + 37] for i in range(0, len(text), 37)]
        pieces = list(cut_pieces(chunks, size=40, max_size=10**6))
        assert "".join(pieces) == text and all(len(p) >= 40 for p in pieces[:-1])
        assert len(pieces) > 1 or len(text) < 200
        tokens = [t for ids in tokenizer.encode_batch(pieces) for t in ids.tolist()]
        assert tokens == tokenizer.encode(text), text


def test_a_line_with_no_safe_cut_is_cut_at_max_size():
    pieces = list(cut_pieces(["x" * 250], size=10, max_size=100))
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_streamed_text_is_normalized_like_read_text(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "READ_BYTES", 3)  # \r\n, the byte-order mark and ☃ straddle reads
    text = "\ufeffa\r\nb\rc\r\r\n☃é\r"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert "".join(read_text_chunks(path)) == read_text(path) == "a\nb\nc\n\n☃é\n"
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    assert "".join(read_text_chunks(gz)) == read_text(path)


def test_documents_from_files_directories_globs_and_gz(tmp_path, docs, bpe):
    root, texts = docs
    meta = quiet([str(root / "a.txt"), str(root / "*.gz"), str(root / "sub")], tmp_path / "data", tokenizer="bpe",
                 vocab_size=300)
    data = open_prepared(tmp_path / "data")
    tok = data.tokenizer
    assert tok.kind == "bpe" and tok.vocab_size == 300 and meta["eot_id"] == 299 and meta["documents"] == 4
    expected = {"train": [], "val": []}
    for name in ["a.txt", "b.txt.gz", "sub/c.txt", "sub/d.txt"]:
        text = texts[name].removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
        cut = int(0.9 * len(text))
        expected["train"] += [*tok.encode(text[:cut]), tok.eot_id]
        expected["val"] += [*tok.encode(text[cut:]), tok.eot_id]
    assert data.train.tolist() == expected["train"] and data.val.tolist() == expected["val"]
    assert [r["path"] for r in meta["inputs"]] == [str(root / n) for n in ["a.txt", "b.txt.gz", "sub/c.txt",
                                                                         "sub/d.txt"]]
    for record in meta["inputs"]:
        assert record["sha256"] == sha256(root / record["path"]) and record["bytes"] == (root / record["path"]).stat(
        ).st_size


def test_meta_json_records_counts_and_sha256s(tmp_path, docs):
    root, texts = docs
    meta = quiet([str(root / "sub")], tmp_path / "data", val_fraction=0.25)
    out = tmp_path / "data"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    c = texts["sub/c.txt"]
    d = texts["sub/d.txt"].removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    train_text = c[: int(0.75 * len(c))] + d[: int(0.75 * len(d))]
    val_text = c[int(0.75 * len(c)):] + d[int(0.75 * len(d)):]
    assert {k: meta[k] for k in ["format", "tokenizer", "vocab_size", "dtype", "eot_id", "train_tokens", "val_tokens",
                                 "train_bytes", "val_bytes", "documents", "val_fraction"]} == {
        "format": "jaxgpt-tokens-1", "tokenizer": "char", "vocab_size": len(set(c + d)), "dtype": "uint16",
        "eot_id": None, "train_tokens": len(train_text), "val_tokens": len(val_text),
        "train_bytes": len(train_text.encode()), "val_bytes": len(val_text.encode()), "documents": 2,
        "val_fraction": 0.25}
    assert meta["sha256"] == {name: sha256(out / name) for name in ["train.bin", "val.bin", "tokenizer.json"]}
    assert isinstance(meta["jaxgpt_version"], str)
    assert open_prepared(out).fingerprint != open_prepared(quiet_copy(tmp_path, root)).fingerprint


def quiet_copy(tmp_path, root):
    quiet([str(root / "sub")], tmp_path / "other", val_fraction=0.5)
    return tmp_path / "other"


def test_val_inputs_validate_and_all_inputs_train(tmp_path, docs):
    root, texts = docs
    meta = quiet([str(root / "a.txt")], tmp_path / "data", val_inputs=[str(root / "sub" / "c.txt")])
    data = open_prepared(tmp_path / "data")
    assert data.tokenizer.decode(data.train) == texts["a.txt"]
    assert data.tokenizer.decode(data.val) == texts["sub/c.txt"]
    assert meta["val_fraction"] is None and [r["path"] for r in meta["val_inputs"]] == [str(root / "sub/c.txt")]


def test_dtype_uint32_and_overwrite(tmp_path, small_text_file):
    quiet([str(small_text_file)], tmp_path / "data", dtype="uint32")
    assert open_prepared(tmp_path / "data").train.dtype == np.uint32
    with pytest.raises(UsageError, match="is not empty; choose another directory or pass --overwrite"):
        quiet([str(small_text_file)], tmp_path / "data")
    quiet([str(small_text_file)], tmp_path / "data", overwrite=True)
    assert open_prepared(tmp_path / "data").train.dtype == np.uint16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "small.txt"]  # no staging or old dir left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="holds files but no prepared dataset; --overwrite only replaces"):
        quiet([str(small_text_file)], tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.fixture
def prepared(tmp_path, small_text_file):
    quiet([str(small_text_file)], tmp_path / "data")
    return tmp_path / "data"


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def swap(a, b):
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]),
     r"train.bin has 35,998 bytes but meta.json says 18,000 uint16 tokens \(36,000 bytes\): truncated, swapped"),
    (lambda d: swap(d / "train.bin", d / "val.bin"), r"train.bin has 4,000 bytes but meta.json says 18,000"),
    (lambda d: flip_a_byte(d / "val.bin"), r"val.bin does not match the sha256 in meta.json: changed, swapped"),
    (lambda d: (d / "val.bin").unlink(), r"val.bin is missing but meta.json says 2,000 uint16 tokens"),
    (lambda d: flip_a_byte(d / "tokenizer.json"), r"tokenizer.json is missing or not the one meta.json records"),
    (lambda d: edit_meta(d, vocab_size=66), r"tokenizer.json has 58 tokens but meta.json says 66"),
    (lambda d: edit_meta(d, dtype="uint32"), r"train.bin has 36,000 bytes but meta.json says 18,000 uint32"),
    (lambda d: edit_meta(d, dtype="int8"), r"meta.json is damaged \(KeyError: 'int8'\)"),
    (lambda d: edit_meta(d, vocab_size=70_000), r"says vocab_size 70000 in uint16 tokens, which cannot hold it"),
    (lambda d: edit_meta(d, val_tokens=0), r"val.bin: the val split is empty"),
    (lambda d: (d / "meta.json").write_text("{"), r"meta.json is damaged \(JSONDecodeError"),
    (lambda d: (d / "meta.json").unlink(), r"is not a prepared dataset \(no meta.json\)"),
])
def test_open_prepared_rejects_damaged_datasets(prepared, damage, message):
    damage(prepared)
    with pytest.raises(UsageError, match=message) as err:
        open_prepared(prepared)
    assert "\n" not in str(err.value)


def edit_meta(directory, **changes):
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, **changes}))


def test_without_verify_the_token_files_are_not_hashed(prepared):
    flip_a_byte(prepared / "val.bin")
    data = open_prepared(prepared, verify=False)
    assert len(data.val) == 2000 and not data.val.flags.writeable


def test_a_non_utf8_byte_deep_in_an_input_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "READ_BYTES", 4096)
    data = ("é" * 100_000).encode("utf-8") + b"\xff" + b"x" * 1000  # the bad byte at offset 200,000
    (tmp_path / "big.txt").write_bytes(data)
    with pytest.raises(UsageError, match=r"big.txt is not UTF-8 text \(bad byte at offset 200,000\); convert it"):
        quiet([str(tmp_path / "big.txt")], tmp_path / "data")
    (tmp_path / "big.txt.gz").write_bytes(gzip.compress(data))
    with pytest.raises(UsageError, match=r"big.txt.gz is not UTF-8 text \(bad byte at offset 200,000 of its "
                                         r"uncompressed text\)"):
        quiet([str(tmp_path / "big.txt.gz")], tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "big.txt.gz"]


@pytest.mark.parametrize("args, message", [
    ({"inputs": ["{tmp}/empty.txt"]}, "the train split is empty: the inputs hold 0 characters"),
    ({"inputs": ["{tmp}/small.txt"], "val_inputs": ["{tmp}/empty.txt"]}, "the val split is empty: the --val inputs"),
    ({"inputs": ["{tmp}/small.txt"], "val_fraction": 1e-20}, "the val split is empty: --val_fraction=1e-20 of"),
    ({"inputs": ["{tmp}/*.md"]}, r"no file matches INPUT '.*\*.md'"),
    ({"inputs": ["{tmp}/nope.txt"]}, r"INPUT '.*nope.txt' does not exist"),
    ({"inputs": ["{tmp}/bad.txt.gz"]}, r"cannot read .*bad.txt.gz: Not a gzipped file"),
    ({"inputs": ["{tmp}/small.txt", "{tmp}/small.txt"]}, "small.txt is given twice"),
    ({"inputs": ["{tmp}/small.txt"], "val_inputs": ["{tmp}/small.txt"]}, "is both a training input and a --val"),
    ({"inputs": ["{tmp}/small.txt"], "tokenizer": "bpe", "vocab_size": 70_000, "dtype": "uint16"},
     r"vocab_size 70000 does not fit --dtype=uint16 \(at most 65536 tokens\)"),
    ({"inputs": ["{tmp}/small.txt"], "tokenizer": "bpe"}, "--tokenizer=bpe needs --vocab_size=N"),
    ({"inputs": ["{tmp}/small.txt"], "vocab_size": 300}, "--vocab_size is for --tokenizer=bpe"),
    ({"inputs": ["{tmp}/small.txt"], "val_fraction": 1.0}, r"--val_fraction must be in \(0, 1\), got 1.0"),
    ({"inputs": ["{tmp}/small.txt"], "tokenizer": "words"}, "--tokenizer must be char, bpe or gpt2"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, small_text_file, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt.gz").write_text("not gzip")
    args = {k: [p.format(tmp=tmp_path) for p in v] if isinstance(v, list) else v for k, v in args.items()}
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UsageError, match=message) as err:
        quiet(out=tmp_path / "data", **args)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_full_disk_or_an_interrupt_leaves_nothing(tmp_path, small_text_file, monkeypatch, failure):
    writes = []

    def write_tokens(file, data):
        writes.append(len(data))
        if len(writes) == 2:
            raise failure
        file.write(data)

    monkeypatch.setattr(prep, "PIECE_CHARS", 1000)
    monkeypatch.setattr(prep, "write_tokens", write_tokens)
    with pytest.raises(UsageError if isinstance(failure, OSError) else KeyboardInterrupt) as err:
        quiet([str(small_text_file)], tmp_path / "data")
    if isinstance(failure, OSError):
        assert str(err.value) == f"prepare failed: No space left on device; nothing was written to {tmp_path / 'data'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.txt"]


def test_the_command_line(tmp_path, small_text_file, capsys):
    main([str(small_text_file), f"--out={tmp_path / 'data'}", "--tokenizer=bpe", "--vocab_size=300", "--quiet"])
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'data'}: 12,647 train and 1,453 val tokens (bpe, "
                                       "vocab_size 300, uint16) from 1 documents\n")
    assert open_prepared(tmp_path / "data").tokenizer.vocab_size == 300
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(tmp_path / "nope.txt"), f"--out={tmp_path / 'other'}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: INPUT '{tmp_path / 'nope.txt'}' does not exist\n"
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(small_text_file), "--out=x", "--tokenizer=words"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_killed_prepare_leaves_only_a_hidden_partial_dir(tmp_path, small_text_file, monkeypatch):
    """A SIGKILL skips every cleanup: what it can leave is the hidden staging directory, never DATA_DIR."""

    def killed(file, data):
        raise SystemExit  # stands in for the kill; its cleanup is undone below, as a kill would skip it

    monkeypatch.setattr(prep, "write_tokens", killed)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        quiet([str(small_text_file)], tmp_path / "data")
    left = [p.name for p in tmp_path.iterdir() if p.name != "small.txt"]
    assert len(left) == 1 and left[0].startswith(".data.") and left[0].endswith(".partial")
    with pytest.raises(UsageError, match="is not a prepared dataset"):
        open_prepared(tmp_path / "data")


def test_gpt2_datasets_hold_the_encoding_and_fail_early_offline(tmp_path, small_text_file, monkeypatch):
    ranks = {bytes([i]): i for i in range(256)} | {b"th": 256, b"the": 257}
    tiny = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 258})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: tiny)
    meta = quiet([str(small_text_file)], tmp_path / "data", tokenizer="gpt2")
    data = open_prepared(tmp_path / "data")
    text = read_text(small_text_file)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("tiktoken", 259, 258)
    assert data.train.tolist() == [*tiny.encode_ordinary(text[:18_000]), 258]

    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UsageError, match=r"GPT-2's encoding is not in tiktoken's cache .*\(no network\)"):
        quiet([str(tmp_path / "not-read-yet.txt")], tmp_path / "other", tokenizer="gpt2")


def test_the_output_directory_is_never_read_as_input(tmp_path, small_text_file):
    """prepare corpus --out=corpus/data --overwrite: the earlier output (and the lock beside it) are not documents."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(small_text_file, corpus / "book.txt")
    first = quiet([str(corpus)], corpus / "data")
    again = quiet([str(corpus)], corpus / "data", overwrite=True)
    assert {k: again[k] for k in ("vocab_size", "train_tokens", "documents")} == \
           {k: first[k] for k in ("vocab_size", "train_tokens", "documents")} == \
           {"vocab_size": first["vocab_size"], "train_tokens": first["train_tokens"], "documents": 1}
    with pytest.raises(UsageError, match=r"INPUT '.*corpus/data/train.bin' is prepare's own output \(--out\); it is "
                                         "never an input"):
        quiet([str(corpus / "data" / "train.bin")], corpus / "data", overwrite=True)


def test_a_path_that_exists_is_taken_literally_even_with_glob_characters(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data[1].txt").write_text("the literal file\n" * 50)
    (tmp_path / "in" / "data1.txt").write_text("what the glob would match\n" * 50)
    (tmp_path / "in" / "book [draft].txt").write_text("a draft\n" * 50)
    meta = quiet([str(tmp_path / "in" / "data[1].txt")], tmp_path / "a")
    assert [r["path"] for r in meta["inputs"]] == [str(tmp_path / "in" / "data[1].txt")]
    assert open_prepared(tmp_path / "a").tokenizer.decode(open_prepared(tmp_path / "a").train[:16]) == \
           "the literal file"
    meta = quiet([str(tmp_path / "in" / "book [draft].txt")], tmp_path / "b")
    assert [r["path"] for r in meta["inputs"]] == [str(tmp_path / "in" / "book [draft].txt")]
    meta = quiet([str(tmp_path / "in" / "data?.txt")], tmp_path / "c")  # a real glob still globs
    assert [r["path"] for r in meta["inputs"]] == [str(tmp_path / "in" / "data1.txt")]


def test_an_input_that_grows_between_the_passes_is_refused(tmp_path, small_text_file, monkeypatch):
    grown = tmp_path / "grown.txt"
    shutil.copy(small_text_file, grown)
    scan = prep._scan

    def scan_then_append(path, chars, bar):
        document = scan(path, chars, bar)
        with open(grown, "a", encoding="utf-8") as f:  # a writer appends after the first pass read it
            f.write("more text\n" * 1000)
        return document

    monkeypatch.setattr(prep, "_scan", scan_then_append)
    size = small_text_file.stat().st_size
    with pytest.raises(UsageError, match=rf"grown.txt changed while prepare read it \({size:,} bytes, then "
                                         rf"{size + 10_000:,}\); prepare it again once nothing writes to it"):
        quiet([str(grown)], tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown.txt", "small.txt"]


def test_pipes_and_devices_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(UsageError, match=r"INPUT '.*fifo' is not a regular file \(a pipe or a device\); save it "):
        quiet([str(fifo)], tmp_path / "data")
    read_end, write_end = os.pipe()  # what prepare <(cat f) and /dev/stdin are
    try:
        with pytest.raises(UsageError, match=rf"INPUT '/dev/fd/{read_end}' is not a regular file"):
            quiet([f"/dev/fd/{read_end}"], tmp_path / "data")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_token_files_and_other_binary_files_are_not_text(tmp_path, prepared):
    with pytest.raises(UsageError, match=r"train.bin is not text \(a NUL byte at offset 1\); prepare takes text"):
        quiet([str(prepared / "train.bin")], tmp_path / "other")
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"text\n" * 10 + b"\0"))
    with pytest.raises(UsageError, match=r"x.gz is not text \(a NUL byte at offset 50 of its uncompressed text\)"):
        quiet([str(tmp_path / "x.gz")], tmp_path / "other")


def test_token_ids_beyond_the_vocabulary_are_refused_on_opening(prepared):
    """An edited meta.json can match the file's size and sha256 and still read the bytes as other tokens."""
    meta = json.loads((prepared / "meta.json").read_text())
    edit_meta(prepared, dtype="uint32", train_tokens=meta["train_tokens"] // 2, val_tokens=meta["val_tokens"] // 2)
    with pytest.raises(UsageError, match=r"train.bin holds token id \d+, but the vocabulary has 58 tokens: meta.json "
                                         r"was edited \(dtype, counts\) or is another dataset's; prepare it again"):
        open_prepared(prepared)


def test_a_small_tokenizer_train_bytes_is_named_as_the_cause(tmp_path, small_text_file):
    with pytest.raises(UsageError, match=r"--tokenizer_train_bytes=1 gives the BPE too little text for 300 tokens "
                                         r"\(1 of the 18,000 training characters\); raise it \(default "
                                         r"100,000,000\) or lower --vocab_size"):
        quiet([str(small_text_file)], tmp_path / "data", tokenizer="bpe", vocab_size=300, tokenizer_train_bytes=1)
