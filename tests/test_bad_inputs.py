"""Bad input, everywhere: each row is a mistake a user can make and the one-line error it must get.

Command-line rows run `python -m jaxgpt.train`'s main in-process through `run_cli`: exit status 2, exactly
one line on stderr, no traceback (one row also runs the real command). API rows call the function and expect
a UsageError. README's "Troubleshooting" section lists the same table; flag-parsing mistakes (unknown flag,
wrong type, bad choice) are in tests/test_cli.py, a PyTorch checkpoint's contents in tests/test_convert.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgpt.cli import run_cli
from jaxgpt.core.config import TrainConfig, load_config
from jaxgpt.run.training import train
from jaxgpt.store import checkpoint, rundir
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.train import main as train_main

# Inputs written to disk for the rows below: name -> (file name, contents).
FILES = {
    "text": ("text.txt", None),  # 20k characters of Shakespeare
    "reversed": ("reversed.txt", None),  # the same characters, another text
    "empty": ("empty.txt", ""),
    "short": ("short.txt", "abc"),
    "broken": ("broken.json", '{"model": '),
    "unknown": ("unknown.json", '{"model": {}, "batch_sise": 8}'),
    "raises": ("raises.py", "raise RuntimeError('boom')\n"),
    "wrong_type": ("wrong_type.py", "from jaxgpt import TrainConfig\nconfig = TrainConfig(batch_size='8')\n"),
    "no_config": ("no_config.py", "x = 1\n"),
    "a_file": ("a_file", "not a directory\n"),
    "non_empty": ("non_empty", None),  # a directory holding notes.txt
    "a_dir": ("a_dir", None),  # an empty directory
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory, shakespeare_text) -> dict[str, Path]:
    """The FILES, a Latin-1 file, and a finished 2-step run (vocab_size 58) to resume, damage or load."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {name: root / file_name for name, (file_name, _) in FILES.items()} | {"root": root}
    for name, (_, text) in FILES.items():
        if text is not None:
            paths[name].write_text(text, encoding="utf-8")
    paths["text"].write_text(shakespeare_text[:20_000], encoding="utf-8")
    paths["reversed"].write_text(shakespeare_text[:20_000][::-1], encoding="utf-8")
    paths["a_dir"].mkdir()
    paths["non_empty"].mkdir()
    (paths["non_empty"] / "notes.txt").write_text("precious\n")
    paths["latin1"] = root / "latin1.txt"
    paths["latin1"].write_bytes("caf\xe9\n".encode("latin-1") * 100)
    paths["run"] = root / "run"
    config = dataclasses.replace(load_config("tiny"), data_path=str(paths["text"]), out_dir=str(paths["run"]),
                                 max_iters=2, eval_interval=1, progress=False, sample_chars=0)
    train(config, log=lambda _: None)
    return paths


# (what is wrong, arguments, the error line it gets); {name} is a path from `paths`, {copy} a fresh copy of
# the finished run, {tmp} a fresh directory.
TRAIN_ROWS = [
    ("learning rate NaN", ["--learning_rate=nan"], "learning_rate must be a finite number, got nan"),
    ("gradient clip inf", ["--grad_clip=inf"], "grad_clip must be a finite number, got inf"),
    ("checkpoint interval 0", ["--checkpoint_interval=0"], "checkpoint_interval must be positive, got 0"),
    ("keep no checkpoints", ["--keep_checkpoints=0"], "keep_checkpoints must be positive, got 0"),
    ("negative LayerNorm eps", ["--layer_norm_eps=-1"], "layer_norm_eps must be positive, got -1.0"),
    ("resume and overwrite", ["--resume", "--overwrite"],
     "--resume continues the run in out_dir and --overwrite replaces it; choose one"),
    ("data is a directory", ["--data_path={a_dir}"],
     "{a_dir} is not a prepared dataset (no meta.json); make one with python -m jaxgpt.prepare"),
    ("data is empty", ["--data_path={empty}"], "{empty} is empty; give a text file to train on"),
    ("data is not UTF-8", ["--data_path={latin1}"], "{latin1} is not UTF-8 text (bad byte at offset 3)"),
    ("data shorter than a block", ["--data_path={short}"],
     "the train split has 2 tokens but block_size 16 needs at least 17"),
    ("out_dir holds files", ["--out_dir={non_empty}"],
     "out_dir '{non_empty}' is not empty; choose another --out_dir, pass --resume to continue its run or "
     "--overwrite to replace it"),
    ("out_dir is a file", ["--out_dir={a_file}"], "out_dir '{a_file}' is a file; choose a directory"),
    ("out_dir under a file", ["--out_dir={a_file}/run"], "cannot write to out_dir '{a_file}/run': Not a directory"),
    ("resume with nothing to resume", ["--resume", "--out_dir={tmp}"],
     "nothing to resume in '{tmp}': it holds no run; start without --resume"),
    ("resume a run killed before its first checkpoint", ["--resume", "--out_dir={no_checkpoint}"],
     "nothing to resume in '{no_checkpoint}': its run saved no checkpoint; start it again with --overwrite"),
    ("seed beyond 32 bits", ["--seed=9223372036854775808"], "seed must be in [0, 2**32), got 9223372036854775808"),
    ("negative seed", ["--seed=-1"], "seed must be in [0, 2**32), got -1"),
    ("resume another model", ["--resume", "--out_dir={copy}", "--n_embd=64"],
     "cannot resume from step 2 in {copy}: the config differs in n_embd (checkpoint 32, now 64); use the "
     "checkpoint's values or a new --out_dir"),
    ("resume on another text", ["--resume", "--out_dir={copy}", "--data_path={reversed}"],
     "the training text differs from the checkpoint's (sha256 mismatch); use the same --data_path"),
    ("resume on another alphabet", ["--resume", "--out_dir={copy}", "--data_path={latin1_utf8}"],
     "cannot resume {copy}: it was trained on character tokens (58), but {latin1_utf8} holds character tokens (5); "
     "resume with the data the run was trained on, or start a new --out_dir"),
    ("config file missing", ["--config={root}/missing.json"], "config file '{root}/missing.json' does not exist"),
    ("config JSON broken", ["--config={broken}"], "{broken} is not a valid jaxgpt config: Expecting value"),
    ("config JSON unknown field", ["--config={unknown}"],
     "{unknown} is not a valid jaxgpt config: config fields do not match this jaxgpt (TypeError: "),
    ("config file raises", ["--config={raises}"], "config file '{raises}' failed: RuntimeError: boom"),
    ("config field of the wrong type", ["--config={wrong_type}"], "batch_size must be an int, got '8'"),
    ("config file without config", ["--config={no_config}"], "must define `config = TrainConfig(...)`"),
]


def fill(template: str, paths: dict[str, Path], extra: dict[str, Path]) -> str:
    return template.format(**{name: str(path) for name, path in (paths | extra).items()})


@pytest.mark.parametrize(("case", "args", "message"), TRAIN_ROWS, ids=[row[0] for row in TRAIN_ROWS])
def test_train_cli(case, args, message, paths, tmp_path, capsys):
    latin1_utf8 = tmp_path / "latin1_utf8.txt"  # another alphabet, valid UTF-8
    latin1_utf8.write_text(paths["latin1"].read_bytes().decode("latin-1"), encoding="utf-8")
    extra = {"copy": tmp_path / "copy", "tmp": tmp_path / "fresh", "latin1_utf8": latin1_utf8,
             "no_checkpoint": tmp_path / "no_checkpoint"}
    shutil.copytree(paths["run"], extra["copy"])
    shutil.copytree(paths["run"], extra["no_checkpoint"], ignore=shutil.ignore_patterns("checkpoints*"))
    base = ["--config=tiny", f"--data_path={paths['text']}", f"--out_dir={tmp_path / 'out'}", "--progress=false",
            "--sample_chars=0"]
    if any(arg.startswith("--config=") for arg in args):
        base = base[1:]
    with pytest.raises(SystemExit) as exited:
        run_cli(train_main, base + [fill(arg, paths, extra) for arg in args])
    stderr = capsys.readouterr().err.strip()
    assert exited.value.code == 2, stderr
    assert stderr.splitlines() == [stderr] and stderr.startswith("error: "), stderr
    assert fill(message, paths, extra) in stderr
    assert not (tmp_path / "out").exists() and not extra["tmp"].exists()  # a usage error creates no out_dir


def test_resume_refusal_leaves_the_checkpoints_alone(paths, tmp_path):
    run = shutil.copytree(paths["run"], tmp_path / "run")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(UsageError, match="the config differs in n_layer"):
        config = TrainConfig.load(run / "config.json")
        train(dataclasses.replace(config, resume=True, model=dataclasses.replace(config.model, n_layer=3)),
              log=lambda _: None)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_full_disk_is_refused_before_training(paths, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=1000))
    config = dataclasses.replace(load_config("tiny"), data_path=str(paths["text"]), out_dir=str(tmp_path / "run"))
    with pytest.raises(UsageError, match=r"has 0\.0 MB free but 5 checkpoints need about 1\.\d MB; free some space"):
        train(config, log=lambda _: None)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_real_command_resume_mismatch_is_one_line_exit_2(paths, tmp_path):
    copy = shutil.copytree(paths["run"], tmp_path / "copy")
    result = subprocess.run([sys.executable, "-m", "jaxgpt.train", f"--out_dir={copy}", "--resume", "--n_head=4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: cannot resume from step 2 in {copy}: the config differs in n_head "
                                     "(checkpoint 2, now 4); use the checkpoint's values or a new --out_dir")


def damage_all(run: Path) -> None:
    for data in (run / "checkpoints").rglob("d/*"):
        data.write_bytes(b"")


# checkpoint.load(out_dir, step): (what is wrong, how to prepare a copy of the run, step, error, error type)
LOAD_ROWS = [
    ("no such directory", lambda run: shutil.rmtree(run), None, "run directory '{run}' does not exist", UsageError),
    ("a file, not a directory", lambda run: (shutil.rmtree(run), run.write_text("x")), None,
     "run directory '{run}' is not a directory", UsageError),
    ("not a run directory", lambda run: (run / "config.json").unlink(), None,
     "{run} is not a jaxgpt run directory: config.json is missing", UsageError),
    ("step of the wrong type", lambda run: None, "latest", "step must be an int, 'best' or None, got 'latest'",
     UsageError),
    ("step never saved", lambda run: None, 7, "no checkpoint for step=7 in {run}; steps available: 2", UsageError),
    ("broken tokenizer", lambda run: (run / "tokenizer.json").write_text("{}"), None,
     "{run}/tokenizer.json is not a valid tokenizer file", UsageError),
    ("no weights saved yet", lambda run: (shutil.rmtree(run / "checkpoints"), shutil.rmtree(run / "checkpoints_best")),
     None, "{run} has no checkpoints/ and no params/: the run saved no weights yet", UsageError),
    ("every checkpoint damaged", lambda run: (damage_all(run), shutil.rmtree(run / "checkpoints_best")), None,
     "no usable checkpoint in {run}: step 2: ", JaxgptError),
    ("damaged exported params", lambda run: (
        shutil.rmtree(run / "checkpoints"), shutil.rmtree(run / "checkpoints_best"), (run / "params").mkdir()),
     None, "cannot read the params in {run}/params: ", JaxgptError),
    ("broken config in an exported run", lambda run: (
        shutil.rmtree(run / "checkpoints"), shutil.rmtree(run / "checkpoints_best"), (run / "params").mkdir(),
        (run / "config.json").write_text("[")), None, "{run}/config.json is not a valid jaxgpt config", UsageError),
    ("another program's params", lambda run: export(run, {"w": np.ones(3, np.float32)}), None,
     "the params in {run} lack blocks_0/ffwd/fc/bias for the config's model", UsageError),
    ("exported params, config.json edited: n_embd", lambda run: export(run, edit_config={"n_embd": 64}), None,
     "{run}/config.json does not describe the params in {run}/params: n_embd 32 (params) vs 64 (config.json)",
     UsageError),
    ("exported params, config.json edited: n_head", lambda run: export(run, edit_config={"n_head": 1}), None,
     "{run}/config.json does not describe the params in {run}/params: n_head 2 (params) vs 1 (config.json)",
     UsageError),
    ("duplicate characters in tokenizer.json", lambda run: (run / "tokenizer.json").write_text('{"chars": "aab"}'),
     None, "{run}/tokenizer.json is not a valid tokenizer file (ValueError: its character list repeats 'a'",
     UsageError),
]


def export(run: Path, params=None, edit_config: dict | None = None) -> None:
    """Turn a trained run into an exported one (params/ only), optionally with other params or an edited
    config.json."""
    import orbax.checkpoint as ocp

    config, trained, _ = checkpoint.load(run)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "checkpoints_best")
    if params is None:
        checkpoint.save_params(run, trained, config.model)
    else:  # written by another program: no jaxgpt config with them
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(run / "params", params)
    if edit_config:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **edit_config))
        config.save(run / "config.json")


@pytest.mark.parametrize(("case", "prepare", "step", "message", "error"), LOAD_ROWS, ids=[r[0] for r in LOAD_ROWS])
def test_checkpoint_load(case, prepare, step, message, error, paths, tmp_path):
    run = shutil.copytree(paths["run"], tmp_path / "run")
    prepare(run)
    with pytest.raises(error) as raised:
        checkpoint.load(run, step=step)
    assert message.format(run=run) in str(raised.value)
    if error is JaxgptError:
        assert not isinstance(raised.value, UsageError)


# python -m jaxgpt.convert MODEL.pt OUT_DIR: its argument parsing (the checkpoint's contents are tested in
# tests/test_convert.py::test_cli_errors_are_one_line_and_leave_no_output).
CONVERT_ROWS = [
    ("no arguments", [], "the following arguments are required: MODEL.pt, OUT_DIR"),
    ("heads not a number", ["model.pt", "out", "--n_head=abc"], "argument --n_head: invalid int value: 'abc'"),
    ("unknown flag", ["model.pt", "out", "--heads=2"], "unknown flag --heads; did you mean --n_head?"),
]


@pytest.mark.parametrize(("case", "args", "message"), CONVERT_ROWS, ids=[row[0] for row in CONVERT_ROWS])
def test_convert_cli(case, args, message, capsys):
    from jaxgpt.convert import main as convert_main

    with pytest.raises(SystemExit) as exited:
        run_cli(convert_main, args)
    stderr = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and stderr == f"error: {message}", stderr


def test_convert_overwrite_replaces_a_training_run(paths, tmp_path):
    """--overwrite into a trained run leaves no checkpoints behind that load() would prefer to the new weights."""
    import torch

    from jaxgpt.convert import main as convert_main
    from jaxgpt.weights.convert import to_torch_state_dict

    run = shutil.copytree(paths["run"], tmp_path / "run")
    config, params, _ = checkpoint.load(run)
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    torch.save(to_torch_state_dict(doubled, config.model, "lecture"), tmp_path / "model.pt")
    run_cli(convert_main, [str(tmp_path / "model.pt"), str(run), "--tokenizer", str(run / "tokenizer.json"),
                           "--overwrite"])
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "params", "tokenizer.json"]
    _, loaded, _ = checkpoint.load(run)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(doubled), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
