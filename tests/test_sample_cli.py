"""`python -m jaxgpt.sample`: samples from a tiny trained run or pretrained weights, and one-line errors with exit
status 2."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from gpt2_standins import hf_logits, save_tiny_gpt2, tiny_gpt2_encoding, use_hub_standin, use_tiny_gpt2_encoding
from torch_models import layout_config, torch_model

from jaxgpt import sample as cli_sample
from jaxgpt.cli import run_cli
from jaxgpt.core.config import load_config
from jaxgpt.core.sampling import generate
from jaxgpt.run.training import train
from jaxgpt.sample import RULE, main
from jaxgpt.store import checkpoint


def train_tiny(tmp_path_factory, text: str, max_iters: int, **model_changes):
    """The out_dir of a short run of the `tiny` config (its model changed by `model_changes`)."""
    data = tmp_path_factory.mktemp("data") / "small.txt"
    data.write_text(text[:20_000], encoding="utf-8")
    out_dir = tmp_path_factory.mktemp("run")
    tiny = load_config("tiny")
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, **model_changes), data_path=str(data),
                                 out_dir=str(out_dir), overwrite=True, progress=False, sample_chars=0,
                                 max_iters=max_iters, eval_interval=max_iters, eval_iters=2)
    train(config, log=lambda _: None)
    return out_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shakespeare_text):
    return train_tiny(tmp_path_factory, shakespeare_text, 20)


@pytest.fixture(scope="module")
def rope_run_dir(tmp_path_factory, shakespeare_text):
    return train_tiny(tmp_path_factory, shakespeare_text, 2, position="rope")


def sample(capsys, argv: list[str]) -> list[str]:
    main(argv)
    return capsys.readouterr().out.removesuffix("\n").split(f"\n{RULE}\n")


def test_prints_the_samples_of_generate_separated_by_a_rule(run_dir, capsys):
    argv = [f"--out_dir={run_dir}", "--prompt=ROMEO:", "--num_samples=2", "--max_new_tokens=40", "--seed=3",
            "--temperature=0.9", "--top_k=20", "--top_p=0.95"]
    samples = sample(capsys, argv)
    assert len(samples) == 2 and samples[0] != samples[1]
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 40 for s in samples)
    assert sample(capsys, argv) == samples  # the seed fixes the samples
    config, params, tokenizer = checkpoint.load(run_dir)
    prompt = np.array([tokenizer.encode("ROMEO:")] * 2)
    tokens = generate(config.model, params, prompt, 40, jax.random.key(3), temperature=0.9, top_k=20, top_p=0.95)
    assert samples == [tokenizer.decode(row) for row in np.asarray(tokens)]


def test_cache_rolling_samples_with_the_rolling_cache(rope_run_dir, capsys, monkeypatch):
    modes = []  # what the command passes to generate (a barely trained model samples alike in both modes)
    monkeypatch.setattr(cli_sample, "generate", lambda *args, **kwargs: modes.append(kwargs["cache"])
                        or generate(*args, **kwargs))
    argv = [f"--out_dir={rope_run_dir}", "--prompt=ROMEO:", "--num_samples=2", "--max_new_tokens=40", "--seed=3"]
    samples = sample(capsys, [*argv, "--cache=rolling"])  # 46 characters: beyond tiny's block_size, 16
    config, params, tokenizer = checkpoint.load(rope_run_dir)
    prompt = np.array([tokenizer.encode("ROMEO:")] * 2)
    tokens = generate(config.model, params, prompt, 40, jax.random.key(3), cache="rolling")
    assert samples == [tokenizer.decode(row) for row in np.asarray(tokens)]
    sample(capsys, argv)
    assert modes == ["rolling", "recompute"]


def test_help_lists_the_cache_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "--cache {recompute,rolling} beyond block_size: recompute (default)" in help_text


def test_default_prompt_is_token_0_a_newline_in_shakespeare(run_dir, capsys):
    (text,) = sample(capsys, [f"--out_dir={run_dir}", "--num_samples=1", "--max_new_tokens=10"])
    assert text.startswith("\n") and len(text) == 11


def test_default_prompt_works_without_a_newline_in_the_vocabulary(tmp_path, capsys):
    data = tmp_path / "no_newline.txt"
    data.write_text("the quick brown fox jumps over the lazy dog " * 50, encoding="utf-8")
    config = dataclasses.replace(load_config("tiny"), data_path=str(data), out_dir=str(tmp_path / "run"),
                                 progress=False, sample_chars=0, max_iters=2, eval_interval=2, eval_iters=1)
    train(config, log=lambda _: None)
    (text,) = sample(capsys, [f"--out_dir={tmp_path / 'run'}", "--num_samples=1", "--max_new_tokens=10"])
    assert text.startswith(" ") and len(text) == 11  # token 0 is the space, as in training's own sample


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give --out_dir=RUN (a training run) or --init_from=SOURCE (pretrained weights); one is required"),
        (["--out_dir=RUN", "--init_from=RUN"], "give --out_dir=RUN (a training run) or --init_from=SOURCE (pretrained "
                                               "weights); not both"),
        (["--init_from=RUN/missing"], "/missing' is not pretrained weights"),
        (["--out_dir=RUN", "--dtype=float16"], "argument --dtype: invalid choice: 'float16'"),
        (["--out_dir=RUN", "--prompt=Hi {there} ☃"], "--prompt has characters not in the vocabulary: '{}☃'"),
        (["--out_dir=RUN", "--prompt="], "--prompt must not be empty"),
        (["--out_dir=RUN", "--top_p=1.5"], r"top_p must be a number in (0, 1] or None, got 1.5"),
        (["--out_dir=RUN", "--top_k=0"], "top_k must be an int >= 1 or None, got 0"),
        (["--out_dir=RUN", "--num_samples=0"], "--num_samples must be >= 1, got 0"),
        (["--out_dir=RUN", "--max_new_tokens=-3"], "max_new_tokens must be an int >= 0, got -3"),
        (["--out_dir=RUN", "--temprature=0.5"], "unknown flag --temprature; did you mean --temperature?"),
        (["--out_dir=RUN", "--seed=9223372036854775808"], "--seed must be in [0, 2**32), got 9223372036854775808"),
        (["--out_dir=RUN", "--seed=-1"], "--seed must be in [0, 2**32), got -1"),
        (["--out_dir=RUN/missing"], "/missing' does not exist; pass the out_dir of a training run"),
        (["--out_dir=RUN/config.json"], "/config.json' is a file; pass the out_dir of a training run"),
        (["--out_dir=RUN", "--top_k=2.5"], "argument --top_k: invalid int value: '2.5'"),
        (["--out_dir=RUN", "--temperature=inf", "--top_k=3"], "temperature must be 0 (greedy) or a number in "
                                                               "[0.0001, 10000]"),
        (["--out_dir=RUN", "--max_new_tokens=3000000000"], "--num_samples * --max_new_tokens must be at most "
                                                            "2,147,483,647 tokens (2**31 - 1), got 3 * 3,000,000,000"),
        (["--out_dir=RUN", "--cache=ring"], "argument --cache: invalid choice: 'ring' (choose from"),
        (["--out_dir=RUN", "--cache=rolling"], "cache='rolling' needs a GPT with rotary positions (position='rope'), "
                                               "got model_type='gpt', position='learned'; use cache='recompute'"),
    ],
)
def test_mistakes_are_one_line_with_exit_status_2(run_dir, capsys, flags, message):
    argv = [flag.replace("RUN", str(run_dir)) for flag in flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and str(tmp_path) in err


def test_a_run_without_a_checkpoint_yet_says_so(run_dir, tmp_path, capsys):
    """A run that has just started: its directory holds config and tokenizer, no checkpoint yet."""
    young = tmp_path / "young"
    young.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(run_dir / name, young / name)
    (young / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--out_dir={young}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == (f"error: {young} has no checkpoint yet: its run has not saved one (the first comes after "
                   "checkpoint_interval steps); try again then\n")


def test_module_runs_from_the_command_line(run_dir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxgpt.sample", f"--out_dir={run_dir}", "--max_new_tokens=5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(RULE) == 2  # three samples


def test_init_from_samples_pretrained_weights_with_their_own_tokenizer(tmp_path, capsys, monkeypatch):
    use_tiny_gpt2_encoding(monkeypatch)
    model = save_tiny_gpt2(tmp_path / "gpt2")
    use_hub_standin(monkeypatch, tmp_path / "gpt2")
    (text,) = sample(capsys, ["--init_from=gpt2", "--prompt=the", "--num_samples=1", "--max_new_tokens=8",
                              "--temperature=0"])
    ids = tiny_gpt2_encoding().encode_ordinary("the")
    for _ in range(8):  # transformers' greedy continuation
        ids.append(int(hf_logits(model, np.array([ids]))[0, -1].argmax()))
    assert text == tiny_gpt2_encoding().decode(ids)
    (half,) = sample(capsys, [f"--init_from={tmp_path / 'gpt2'}", "--num_samples=1", "--max_new_tokens=8",
                              "--dtype=bfloat16"])
    assert half.startswith("<|endoftext|>")  # GPT-2's encoding: a sample starts a document


def test_init_from_weights_without_a_tokenizer_is_one_line(tmp_path, capsys):
    config = layout_config("lecture", vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    torch.save(torch_model(config, "lecture").state_dict(), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--init_from={tmp_path / 'model.pt'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "model.pt does not say which tokenizer it was trained with; convert it with its tokenizer" in err


# --stream and --interactive (jaxgpt/core/streaming.py)

def test_stream_prints_what_sampling_without_it_prints(run_dir, capsys):
    """Character for character, several samples, beyond block_size (16) so every phase streams."""
    argv = [f"--out_dir={run_dir}", "--prompt=ROMEO:", "--num_samples=2", "--max_new_tokens=60", "--seed=5",
            "--temperature=0.9", "--top_k=20"]
    main(argv)
    whole = capsys.readouterr().out
    main([*argv, "--stream"])
    assert capsys.readouterr().out == whole


def sample_command(run_dir, *flags: str) -> list[str]:
    return [sys.executable, "-m", "jaxgpt.sample", f"--out_dir={run_dir}", *flags]


def test_interactive_continues_each_line_until_end_of_input(run_dir, capsys):
    """Driven through a pipe: each prompt is continued as `--prompt` continues it, a prompt the vocabulary cannot
    spell is one error line and the session goes on, end of input ends it with status 0."""
    flags = ["--num_samples=1", "--max_new_tokens=40", "--seed=9"]
    done = subprocess.run(sample_command(run_dir, "--interactive", *flags), input="ROMEO:\n\nnot ~ here\nJULIET:\n",
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    expected = []
    for prompt in ("ROMEO:", "JULIET:"):
        main([f"--out_dir={run_dir}", f"--prompt={prompt}", *flags])
        expected.append(capsys.readouterr().out.removeprefix(prompt))
    assert done.stdout == "".join(f"{text}{RULE}\n" for text in expected)
    assert done.stderr.strip() == ("error: the prompt has characters not in the vocabulary: '~' (1 distinct); "
                                   "give another")


def test_ctrl_c_stops_a_stream_cleanly(run_dir):
    """What was printed stays, the command exits with 130 and one line, no traceback."""
    process = subprocess.Popen(sample_command(run_dir, "--stream", "--num_samples=1", "--max_new_tokens=1000000"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert len(process.stdout.read(40)) == 40  # the stream has begun
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--prompt=ROMEO:", "--compile_for=h100-1"])
def test_interactive_refuses_flags_it_cannot_use(run_dir, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"--out_dir={run_dir}", "--interactive", flag])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: --interactive reads its prompts from the terminal; leave out "
                                               f"{flag.split('=')[0]}")
