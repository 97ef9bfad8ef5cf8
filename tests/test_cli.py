"""Command-line parsing: overrides, help, and one-line errors with exit status 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import GPTConfig, TrainConfig, load_config
from jaxgpt.sample import parse_sample_args
from jaxgpt.system.errors import UsageError


def test_overrides_apply_to_model_and_training_fields():
    config = parse_train_args(["--config=small", "--n_layer=2", "--batch_size", "8", "--dropout=0.1",
                               "--data_path=x.txt", "--progress=false", "--overwrite"])
    assert config.model.n_layer == 2 and config.model.dropout == 0.1 and config.model.n_embd == 64
    assert config.batch_size == 8 and config.data_path == "x.txt"
    assert config.progress is False and config.overwrite is True


def test_config_by_name_and_by_path(tmp_path):
    assert parse_train_args(["--config=lecture"]).model.n_embd == 384
    path = tmp_path / "mine.py"
    path.write_text("from jaxgpt import TrainConfig\nconfig = TrainConfig(batch_size=3)\n")
    assert parse_train_args([f"--config={path}"]).batch_size == 3


def test_a_config_name_is_the_shipped_config_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "shakespeare_char").mkdir()  # e.g. a prepared dataset's folder in the working directory
    monkeypatch.chdir(tmp_path)
    assert parse_train_args(["--config=shakespeare_char"]).model.n_embd == 384


def test_a_config_file_importing_a_moved_module_is_told_where_it_went(tmp_path):
    path = tmp_path / "old.py"
    path.write_text("from jaxgpt.config import TrainConfig\nconfig = TrainConfig(batch_size=3)\n")
    with pytest.raises(UsageError, match=r"No module named 'jaxgpt.config'; jaxgpt's modules moved in 0.2: write "
                                         r"`from jaxgpt import GPTConfig, TrainConfig`"):
        parse_train_args([f"--config={path}"])


HERE = Path(__file__).parent


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batchsize=3"], "unknown flag --batchsize; did you mean --batch_size?"),
        (["--batch_size=three"], "argument --batch_size: invalid int value: 'three'"),
        (["--learning_rate=fast"], "argument --learning_rate: invalid float value: 'fast'"),
        (["--progress=maybe"], "--progress/--noprogress: Boolean value expected for argument, received 'maybe'"),
        (["--seed=9223372036854775808"], r"seed must be in \[0, 2\*\*32\), got 9223372036854775808"),
        (["--seed=-1"], r"seed must be in \[0, 2\*\*32\), got -1"),
        (["--n_embd=30"], r"n_embd \(30\) must be divisible by n_head \(4\)"),
        (["--n_layer=0"], "n_layer must be positive"),
        (["--batch_size=-1"], "batch_size must be positive"),
        (["--max_iters=-5"], "max_iters must not be negative"),
        (["--lr_schedule=linear"], r"--lr_schedule: invalid choice: 'linear' \(choose from 'constant', 'cosine'\)"),
        (["--optimizer=sgd"], r"--optimizer: invalid choice: 'sgd' \(choose from 'adamw', 'muon'\)"),
        (["--muon_momentum=1"], r"muon_momentum must be in \[0, 1\), got 1.0"),
        (["--config=huge"],
         "unknown config 'huge'; choose one of bigram, finetune_shakespeare, lecture, shakespeare_char, small, "
         "speedrun, tiny"),
        (["--config=missing/file.py"], "config file 'missing/file.py' does not exist"),
        ([f"--config={HERE}/"], r"config '.*tests/' is a directory; give a config name, a .py file or a run's "),
        (["--grad_accum=99999999999"], r"grad_accum must be at most 2,147,483,647 \(2\*\*31 - 1\), got 99,999,999,999"),
        (["--grad_accum=100000", "--batch_size=1000"], r"a step of grad_accum \* batch_size \* block_size = "
                                                       r"3,200,000,000 tokens is more than the 2,147,483,647"),
        (["--max_iters=3000000000"], r"max_iters must be at most 2,147,483,647"),
        (["--config=bigram", "--optimizer=muon"], "optimizer='muon' updates the transformer blocks' matrices, and "
                                                  "model_type='bigram' has none: it would train exactly as adamw"),
        (["--config=bigram", "--position=rope", "--qk_norm=true"], r"^position, qk_norm do nothing for "
                                                                   r"model_type='bigram' \(a \(V, V\) table"),
        (["--config=bigram", "--n_layer=8", "--dropout=0.1"], r"^--dropout, --n_layer would do nothing here "
                                                              r"\(model_type='bigram' is a table, not a transformer\); "
                                                              "drop them$"),
        (["--muon_lr=0.05"], r"^--muon_lr would do nothing here \(optimizer is not muon\); drop it$"),
        (["--min_lr=1e-5"], r"^--min_lr would do nothing here \(lr_schedule is not cosine\); drop it$"),
    ],
)
def test_bad_flags(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_train_args(argv)


def test_init_from_starts_from_the_defaults_with_gpt2s_context_and_refuses_shape_flags():
    config = parse_train_args(["--init_from=gpt2", "--dropout=0.1", "--block_size=256", "--dtype=float32"])
    assert config.init_from == "gpt2" and config.model.block_size == 256 and config.model.dropout == 0.1
    assert parse_train_args(["--init_from=gpt2"]).model.block_size == 1024  # not the small config's 32
    assert parse_train_args(["--init_from=gpt2", "--config=tiny"]).model.block_size == 16
    assert parse_train_args(["--config=finetune_shakespeare"]).init_from == "gpt2"
    with pytest.raises(UsageError, match="^--model_type, --n_embd cannot be set with --init_from: the model is the "
                                         "weights'"):
        parse_train_args(["--init_from=gpt2", "--n_embd=768", "--model_type=gpt"])
    with pytest.raises(UsageError, match="^--n_layer cannot be set with --init_from"):
        parse_train_args(["--config=finetune_shakespeare", "--n_layer=2"])
    with pytest.raises(UsageError, match="^--init_from starts a new run from pretrained weights and --resume"):
        parse_train_args(["--init_from=gpt2", "--resume"])
    assert parse_train_args(["--config=finetune_shakespeare", "--resume", "--n_layer=12"]).resume  # resume's rules


def test_muon_flags():
    config = parse_train_args(["--config=tiny", "--optimizer=muon", "--muon_lr=0.05", "--muon_momentum=0.9",
                               "--muon_weight_decay=0.1"])
    assert (config.optimizer, config.muon_lr, config.muon_momentum, config.muon_weight_decay) == ("muon", 0.05, 0.9,
                                                                                                  0.1)
    assert parse_train_args(["--config=tiny"]).optimizer == "adamw"


def test_vocab_size_is_not_a_flag():
    with pytest.raises(UsageError, match="unknown flag --vocab_size"):
        parse_train_args(["--vocab_size=10"])


def run_train(*args: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "jaxgpt.train", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_help_describes_every_field_with_the_configs_default():
    result = run_train("--config=small", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # argparse wraps long lines
    unwrapped = "".join(result.stdout.split())  # wrapped after a hyphen, too
    for cls in (GPTConfig, TrainConfig):
        for field in dataclasses.fields(cls):
            if field.name == "model" or not field.metadata.get("cmd", True):
                continue
            description = field.metadata["help"]
            assert description and "\n" not in description, field.name
            assert f"--{field.name} " in help_text and "".join(description.split()) in unwrapped, field.name
    assert "--batch_size int sequences per micro-batch, all devices together" in help_text
    assert "--grad_accum int micro-batches per optimizer step" in help_text
    assert "--n_embd int channels of the residual stream (default: 64)" in help_text
    assert "--optimizer {adamw,muon} adamw: AdamW for every parameter;" in help_text


def test_optional_fields_take_none():
    assert parse_train_args(["--peak_flops=2e12"]).peak_flops == 2e12
    assert parse_train_args(["--peak_flops=2e12", "--peak_flops=none"]).peak_flops is None
    assert parse_train_args(["--peak_flops=2e12", "--peak_flops", "NONE"]).peak_flops is None
    sample_args = parse_sample_args(["--out_dir=run", "--top_k=none", "--top_p=", "--temperature=0.5"])
    assert sample_args["top_k"] is None and sample_args["top_p"] is None  # the same words as training's flags
    assert parse_train_args(["--data_path="]).data_path is None
    assert parse_train_args(["--resume"]).resume and not parse_train_args(["--resume=false"]).resume
    assert parse_train_args(["--bias=false"]).model.bias is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batchsize=3"], "error: unknown flag --batchsize; did you mean --batch_size?"),
        (["--n_embd=30", "--n_head=4"], "error: n_embd (30) must be divisible by n_head (4); try n_head=3"),
        (["--data_path=/no/such/file.txt"], "error: --data_path points to '/no/such/file.txt', which does not exist"),
        (["--optimizer=sgd"], "error: argument --optimizer: invalid choice: 'sgd' (choose from 'adamw', 'muon')"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(args, message, tmp_path, small_text_file):
    result = run_train("--config=tiny", f"--out_dir={tmp_path / 'run'}", *args,
                       env_extra={"JAXGPT_DATA": str(small_text_file)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # exactly one line, no traceback
    assert message in result.stderr


def test_block_size_too_long_for_the_text(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("abcdefghij" * 10)
    result = run_train("--config=tiny", f"--data_path={text}", "--block_size=64", f"--out_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "error: the val split has 10 tokens but block_size 64 needs at least 65" in result.stderr


def test_tiny_defaults_are_seconds_long():
    config = load_config("tiny")
    assert config.max_iters <= 100 and config.model.n_embd <= 32
