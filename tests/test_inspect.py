"""`python -m jaxgpt.inspect` (jaxgpt/run/inspection.py, jaxgpt/run/inspect_page.py): the page's numbers are the
model's, its attention is the model's own, it works in a real browser, and bad input is one line."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_models import random_params

from jaxgpt import inspect as cli_inspect
from jaxgpt.cli import run_cli
from jaxgpt.core.config import GPTConfig, TrainConfig, load_config
from jaxgpt.core.model import GPT
from jaxgpt.data.tokenizers import CharTokenizer, train_bpe
from jaxgpt.run.evaluate import score
from jaxgpt.run.inspect_page import char_bits, render
from jaxgpt.run.inspection import inspect_text
from jaxgpt.run.training import train
from jaxgpt.store.checkpoint import save_params
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n")
CHARS = CharTokenizer.from_text(TEXT)
LEARNED = GPTConfig(vocab_size=CHARS.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
MODERN = GPTConfig(vocab_size=CHARS.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                   position="rope", norm="rmsnorm", qk_norm=True, logit_softcap=15.0, bias=False, lm_head_bias=False)


def params_of(config: GPTConfig, seed: int = 0):
    return random_params(config, np.random.default_rng(seed), 0.3)


@pytest.mark.parametrize("config", [LEARNED, MODERN], ids=["learned", "rope-qknorm-softcap"])
def test_token_losses_average_to_evals_loss(config):
    """Over eval's consecutive windows: the mean of the page's per-token losses is eval's loss, and bits per byte."""
    params = params_of(config)
    seen = inspect_text(config, params, CHARS, TEXT, "m")
    tokens = np.asarray(CHARS.encode(TEXT), np.int32)
    reference = score(config, params, tokens, CHARS.token_bytes(), batch_size=1, block_size=config.block_size)
    assert seen.loss == pytest.approx(reference.loss, rel=1e-5)
    assert seen.bits_per_byte == pytest.approx(reference.bpb, rel=1e-5)
    assert np.isnan(seen.bits[0]) and not np.isnan(seen.bits[1:]).any()


@pytest.mark.parametrize("config", [LEARNED, MODERN], ids=["learned", "rope-qknorm-softcap"])
def test_attention_rows_sum_to_one_over_the_tokens_before(config):
    seen = inspect_text(config, params_of(config), CHARS, TEXT, "m")
    N, L, H, T = seen.attention.shape
    assert (config.n_layer, config.n_head, config.block_size) == (L, H, T)
    position = np.arange(N) % T  # within the window
    np.testing.assert_allclose(seen.attention.sum(-1), 1.0, rtol=1e-5)
    after = np.arange(T)[None, :] > position[:, None]  # (N, T): keys after the query
    assert (seen.attention.transpose(0, 3, 1, 2)[after] == 0).all()


def test_attention_equals_softmax_of_the_models_queries_and_keys():
    """Layer 0 of a learned-position model, from its own query and key projections (captured by Flax):
    softmax(q k^T / sqrt(hs)) under the causal mask, per head."""
    params = params_of(LEARNED)
    seen = inspect_text(LEARNED, params, CHARS, TEXT, "m")
    window = jnp.asarray([CHARS.encode(TEXT)[:LEARNED.block_size]])
    _, state = GPT(LEARNED).apply({"params": params}, window, capture_intermediates=True, mutable=["intermediates"])
    sa = state["intermediates"]["blocks_0"]["sa"]
    T, nh, hs = LEARNED.block_size, LEARNED.n_head, LEARNED.n_embd // LEARNED.n_head
    q = np.asarray(sa["query"]["__call__"][0][0], np.float64).reshape(T, nh, hs).transpose(1, 0, 2)
    k = np.asarray(sa["key"]["__call__"][0][0], np.float64).reshape(T, nh, hs).transpose(1, 0, 2)
    scores = np.where(np.tril(np.ones((T, T), bool)), q @ k.transpose(0, 2, 1) / np.sqrt(hs), -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)  # (nh, T, T)
    np.testing.assert_allclose(seen.attention[:T, 0].transpose(1, 0, 2), expected, atol=1e-5)


def test_fused_attention_paths_are_inspected_through_xlas_and_refuse_to_sow():
    """attention="dot_product" computes the same function without the weights: inspect reads them from XLA's
    path (the same numbers), and asking that path itself to sow them is one line."""
    fused = GPTConfig(**{**LEARNED.__dict__, "attention": "dot_product"})
    params = params_of(LEARNED)
    np.testing.assert_array_equal(inspect_text(fused, params, CHARS, TEXT, "m").attention,
                                  inspect_text(LEARNED, params, CHARS, TEXT, "m").attention)
    with pytest.raises(UsageError, match=r"^attention='dot_product' does not compute the attention weights it "
                                         r"applies; inspect the model with attention='xla', the same function"):
        GPT(fused).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), mutable=["intermediates"])


def test_top_k_are_the_likeliest_next_tokens():
    params = params_of(LEARNED)
    seen = inspect_text(LEARNED, params, CHARS, TEXT, "m", top_k=3)
    window = jnp.asarray([CHARS.encode(TEXT)[:LEARNED.block_size]])
    probs = np.asarray(jax.nn.softmax(GPT(LEARNED).apply({"params": params}, window)[0], axis=-1))
    np.testing.assert_array_equal(seen.top_ids[:LEARNED.block_size], np.argsort(-probs, axis=-1)[:, :3])
    np.testing.assert_allclose(seen.top_probs[:LEARNED.block_size], -np.sort(-probs, axis=-1)[:, :3], rtol=1e-5)


def test_a_char_model_and_a_bpe_model_compare_over_the_same_characters():
    """Each token's bits spread over its bytes: per character, both models' bits add up to their totals."""
    bpe = train_bpe([TEXT * 4], 280)
    bpe_config = GPTConfig(vocab_size=bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    chars = inspect_text(LEARNED, params_of(LEARNED), CHARS, TEXT, "char")
    pairs = inspect_text(bpe_config, params_of(bpe_config), bpe, TEXT, "bpe")
    for seen in (chars, pairs):
        per_char = char_bits(seen, TEXT)
        assert np.nansum(per_char) == pytest.approx(np.nansum(seen.bits), rel=1e-5)
    page = render(TEXT, [chars, pairs])
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert len(data["char_diff"]) == len(TEXT) and data["models"][1]["source"] == "bpe"


# ---------------------------------------------------------------------------------------------------------------
# the command, and the page in a real browser

@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(TrainConfig(model=LEARNED, out_dir=str(run.path)))
    run.write_tokenizer(CHARS)
    save_params(run, params_of(LEARNED), LEARNED)
    return run.path


def test_command_writes_one_page(run_dir, tmp_path, capsys):
    out = tmp_path / "page.html"
    cli_inspect.main([str(run_dir), f"--text={TEXT}", f"--out={out}", f"--compare={run_dir}"])
    assert capsys.readouterr().out.startswith(f"wrote {out}: {len(TEXT)} tokens, loss ")
    page = out.read_text(encoding="utf-8")
    assert "<script src" not in page and "http" not in page  # nothing fetched
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    model = data["models"][0]
    attention = np.frombuffer(base64.b64decode(model["attention"]), np.uint8)
    kept = sum(i % LEARNED.block_size + 1 for i in range(len(TEXT)))  # each query's keys up to itself
    assert attention.size == kept * LEARNED.n_layer * LEARNED.n_head
    assert all(d == 0 for d in data["char_diff"] if d is not None)  # a model against itself


@pytest.mark.parametrize(("flags", "message"), [
    (["--text="], "--text is empty; give a file or a string to inspect"),
    (["--text=FirstΩ"], "the text has characters not in the vocabulary: 'Ω' (1 distinct); inspect text the "
                        "model's tokenizer can spell"),
    (["--text=F"], "the text is 1 token(s) long; give at least 2 tokens (the first is only read)"),
    (["--text=Fi", "--top_k=0"], "--top_k must be >= 1, got 0"),
])
def test_bad_input_is_one_line(run_dir, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli_inspect.main, [str(run_dir), *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_source_that_is_not_a_model_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli_inspect.main, [str(tmp_path / "notes.txt"), "--text=hello"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


class Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe): no
    library beyond Debian's chromium package."""

    def __init__(self, binary: str):
        read_end, self.to_browser = os.pipe()
        self.from_browser, write_end = os.pipe()
        # the browser's ends as fds >= 100, so that bash's redirections to 3 and 4 (the protocol's) never overwrite
        # one of them (bash, not sh: dash takes single-digit fds only)
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (read_end, write_end)]
        for fd in (read_end, write_end):
            os.close(fd)
        wire = f'exec "$0" "$@" 3<&{theirs[0]} 4>&{theirs[1]}'
        self.process = subprocess.Popen(
            ["bash", "-c", wire, binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "about:blank"], pass_fds=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in theirs:
            os.close(fd)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session
                                                                              else {})}
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                self.buffer += os.read(self.from_browser, 1 << 20)
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]
            self.events.append(reply)

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Runtime.enable", session)
        self.send("Page.enable", session)
        self.send("Page.navigate", session, url=url)
        deadline = time.monotonic() + 60
        while self.evaluate(session, "document.readyState") != "complete":
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def errors(self) -> list[dict]:
        return [e for e in self.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def browser():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    opened = Browser(binary)
    yield opened
    opened.close()


def test_page_opens_from_a_file_and_a_click_shows_attention_and_top_k(run_dir, tmp_path, browser):
    out = tmp_path / "page.html"
    cli_inspect.main([str(run_dir), f"--text={TEXT}", f"--out={out}", "--top_k=4"])
    session = browser.open(out.as_uri())
    assert browser.evaluate(session, "document.querySelectorAll('#text .tok').length") == len(TEXT)
    browser.evaluate(session, "document.querySelector('#text .tok[data-i=\"20\"]').click()")
    assert browser.evaluate(session, "document.querySelectorAll('#topk-table tr').length") == 4
    assert browser.evaluate(session, "document.querySelectorAll('#grid td').length") == 4  # 2 layers x 2 heads
    assert browser.evaluate(session, "document.querySelectorAll('#attn .tok').length") == 20 % 16 + 1
    browser.evaluate(session, "document.querySelector('#grid td[data-l=\"1\"][data-h=\"1\"]').click()")
    assert browser.evaluate(session, "document.querySelector('#grid td.chosen').dataset.l") == "1"
    seen = inspect_text(LEARNED, params_of(LEARNED), CHARS, TEXT, "m")
    for i, l, h in ((0, 0, 0), (15, 1, 0), (16, 0, 1), (20, 1, 1), (len(TEXT) - 1, 1, 1)):  # window edges
        shown = browser.evaluate(session, f"JSON.stringify(weights({i}, {l}, {h}))")
        np.testing.assert_allclose(json.loads(shown), np.round(seen.attention[i, l, h] * 255) / 255, atol=1e-12)
    assert browser.errors() == []


def test_compare_page_shows_both_models_in_a_browser(run_dir, tmp_path, browser):
    out = tmp_path / "page.html"
    cli_inspect.main([str(run_dir), f"--text={TEXT}", f"--out={out}", f"--compare={run_dir}"])
    session = browser.open(out.as_uri())
    assert browser.evaluate(session, "document.querySelectorAll('#second .tok').length") == len(TEXT)
    assert browser.evaluate(session, "document.getElementById('wins').textContent") == "0.0"  # ties: no win
    assert browser.errors() == []


def test_a_5000_token_page_stays_usable(run_dir, tmp_path, browser):
    """Its size and the time the browser takes to open it and answer a click (printed; bounds generous)."""
    text = (TEXT * 60)[:5000]
    out = tmp_path / "page.html"
    cli_inspect.main([str(run_dir), f"--text={text}", f"--out={out}"])
    size = out.stat().st_size
    start = time.monotonic()
    session = browser.open(out.as_uri())
    browser.evaluate(session, "document.querySelector('#text .tok[data-i=\"4999\"]').click()")
    opened = time.monotonic() - start
    print(f"5,000 tokens: {size / 1e6:.2f} MB, opened and clicked in {opened:.2f} s")
    assert size < 20e6 and opened < 30
    assert browser.evaluate(session, "document.querySelectorAll('#topk-table tr').length") == 5
    assert browser.errors() == []


def test_training_writes_a_page_unless_told_not_to(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text(TEXT * 40, encoding="utf-8")
    tiny = load_config("tiny")
    for inspect in (True, False):
        out = tmp_path / f"run-{inspect}"
        train(dataclasses.replace(tiny, data_path=str(data), out_dir=str(out), max_iters=2, eval_interval=2,
                                  eval_iters=1, sample_chars=0, plot=False, progress=False, inspect=inspect),
              log=lambda _: None)
        assert (out / "inspect.html").exists() is inspect
    page = (tmp_path / "run-True" / "inspect.html").read_text(encoding="utf-8")
    assert '"source": "this run"' in page
