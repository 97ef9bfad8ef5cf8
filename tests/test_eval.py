"""`python -m jaxgpt.eval` (jaxgpt.eval): the whole split's loss equals the one transformers computes on the same
windows, bits per byte and perplexity follow from it, bfloat16 weights stay close, and mistakes are one line with
exit status 2. Offline stand-ins for GPT-2: tests/gpt2_standins.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from gpt2_standins import VOCAB_SIZE

from jaxgpt.cli import run_cli
from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.model import init_params
from jaxgpt.data.batches import consecutive_windows
from jaxgpt.data.prepared import open_prepared
from jaxgpt.data.text import load_dataset
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.eval import main
from jaxgpt.run.evaluate import evaluate, score
from jaxgpt.run.training import Run
from jaxgpt.system.errors import JaxgptError
from jaxgpt.weights.convert import write_run_dir

pytestmark = pytest.mark.usefixtures("gpt2_encoding")  # GPT-2's encoding: the tiny stand-in
T = 16  # the windows scored: shorter than the stand-in's 32 positions, so transformers can see T + 1 tokens


def test_the_loss_is_the_one_transformers_computes_on_the_same_windows(hf, gpt2_data):
    directory, model = hf
    result = evaluate(str(directory), gpt2_data, batch_size=4, block_size=T)
    data = open_prepared(gpt2_data)
    windows, counted = consecutive_windows(data.val, 0, -(-(len(data.val) - 1) // T), T)  # (W, T + 1), (W, T)
    assert len(windows) > 16 * 4  # more windows than one compiled call takes: several calls, the last one padded
    targets = np.where(counted, windows[:, 1:], -100)  # transformers shifts the labels by one itself
    labels = np.concatenate([np.full((len(windows), 1), -100), targets], axis=1)
    with torch.no_grad():
        out = model(torch.as_tensor(windows, dtype=torch.long), labels=torch.as_tensor(labels, dtype=torch.long))
    assert result.loss == pytest.approx(out.loss.item(), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(out.loss.item()), rel=1e-5)
    assert (result.tokens, result.windows, result.block_size) == (len(data.val) - 1, len(windows), T)
    per_token = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB_SIZE),
                                                  torch.as_tensor(windows[:, 1:]).reshape(-1).long(),
                                                  reduction="none").numpy().reshape(counted.shape)
    n_bytes = np.where(counted, data.tokenizer.token_bytes()[windows[:, 1:]], 0)
    assert result.bpb == pytest.approx(per_token[n_bytes > 0].sum() / (math.log(2) * n_bytes.sum()), rel=1e-5)


def test_bfloat16_weights_score_close_to_float32(hf, gpt2_data):
    full = evaluate(str(hf[0]), gpt2_data, split="train", block_size=T)
    half = evaluate(str(hf[0]), gpt2_data, split="train", block_size=T, dtype="bfloat16")
    assert half.loss == pytest.approx(full.loss, abs=0.02) and half.loss != full.loss


@pytest.fixture
def char_run(tmp_path, small_text_file):
    """A converted-style run directory of a random character model, for scoring a text file."""
    tokenizer = CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8"))
    model = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    params = init_params(model, jax.random.key(0))
    config = TrainConfig(model=model, data_path=str(small_text_file), out_dir=str(tmp_path / "char_run"))
    write_run_dir(tmp_path / "char_run", config, params, tokenizer, overwrite=False)
    return tmp_path / "char_run"


def test_a_text_file_scores_as_training_scores_its_whole_val_split(char_run, small_text_file):
    result = evaluate(str(char_run), small_text_file, batch_size=4)
    config = TrainConfig(model=TrainConfig.load(char_run / "config.json").model, data_path=str(small_text_file),
                         init_from=str(char_run), batch_size=4, out_dir=str(char_run.parent / "run"), max_iters=0,
                         progress=False)
    with Run(config, log=lambda _: None) as run:
        expected = run.full_loss(load_dataset(small_text_file, 16).val)
    assert (result.loss, result.bpb) == pytest.approx(expected, rel=1e-6)


def test_module_prints_loss_perplexity_and_bits_per_byte(char_run, small_text_file):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxgpt.eval", str(char_run), f"--data_path={small_text_file}",
                           "--split=train"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{char_run} on {small_text_file} (train): loss ")
    assert "perplexity" in done.stdout and "bits per byte" in done.stdout and "windows of 16)" in done.stdout


@pytest.mark.parametrize(("flags", "message"), [
    ([], "the following arguments are required: SOURCE"),
    (["HF", "--data_path=TEXT"], "python -m jaxgpt.prepare TEXT --tokenizer=gpt2"),
    (["HF", "--block_size=64"], "block_size must be in [1, 32] (the model's context), got 64"),
    (["HF", "--split=test"], "argument --split: invalid choice: 'test'"),
    (["HF", "--batch_size=0"], "batch_size must be in [1, 2,147,483,647], got 0"),
    (["HF", "--dtype=float16"], "argument --dtype: invalid choice: 'float16'"),
    (["nowhere"], "'nowhere' is not pretrained weights"),
])
def test_mistakes_are_one_line_with_exit_status_2(flags, message, hf, gpt2_data, small_text_file, capsys):
    names = {"HF": str(hf[0]), "TEXT": str(small_text_file)}
    argv = [names.get(flag, flag).replace("TEXT", names["TEXT"]) for flag in flags]
    argv += [f"--data_path={gpt2_data}"] if flags and not any(f.startswith("--data_path") for f in flags) else []
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message.replace("TEXT", names["TEXT"]) in err, err


def test_a_score_that_is_not_finite_is_an_error_not_a_result(small_text_file):
    tokenizer = CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8"))
    model = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    params = jax.tree.map(lambda p: p * np.nan, init_params(model, jax.random.key(0)))
    tokens = np.asarray(tokenizer.encode("First Citizen:\nBefore we proceed"), np.int32)
    with pytest.raises(JaxgptError, match=r"^the loss over the split is nan: the weights hold non-finite values or "
                                          r"overflow in this dtype; no score is reported") as err:
        score(model, params, tokens, tokenizer.token_bytes(), 4, 16)
    assert err.value.exit_code == 1
