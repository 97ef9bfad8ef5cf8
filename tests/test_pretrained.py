"""Starting from pretrained weights (jaxgpt.weights.pretrained, `python -m jaxgpt.train --init_from`): every
source kind starts a run with the source framework's logits, fine-tuning lowers the loss, and every refused
combination is one line with exit status 2. Offline: a small `save_pretrained` GPT-2 stands in for the hub, a tiny
tiktoken Encoding for GPT-2's encoding (tests/gpt2_standins.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from gpt2_standins import (
    BLOCK_SIZE,
    VOCAB_SIZE,
    hf_logits,
    prepare_gpt2,
    save_tiny_gpt2,
    use_hub_standin,
)
from safetensors.numpy import save_file
from torch_models import layout_config, torch_logits, torch_model

from jaxgpt.cli import run_cli
from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.model import build_model
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.run.training import Run, train
from jaxgpt.store import checkpoint
from jaxgpt.system.errors import UsageError
from jaxgpt.train import main as train_main
from jaxgpt.weights import pretrained
from jaxgpt.weights.convert import convert_checkpoint

pytestmark = pytest.mark.usefixtures("gpt2_encoding")  # GPT-2's encoding: the tiny stand-in
CHAR_SIZES = {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}


def quiet(_: str) -> None:
    pass


def char_vocab(text_file) -> int:
    return CharTokenizer.from_text(text_file.read_text(encoding="utf-8")).vocab_size


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` with every parameter drawn from N(0, 0.1^2): nothing left at an init that hides mistakes."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def start_config(tmp_path, init_from, data_path, **changes) -> TrainConfig:
    """A run from `init_from` that trains nothing: it only builds its state."""
    settings = {"model": GPTConfig(block_size=1024, dropout=0.0), "batch_size": 4, "max_iters": 0, "eval_iters": 1,
                "progress": False, "sample_chars": 0, **changes}
    return TrainConfig(init_from=str(init_from), data_path=str(data_path), out_dir=str(tmp_path / "run"), **settings)


def started(config: TrainConfig, idx: np.ndarray) -> tuple[np.ndarray, TrainConfig]:
    """The logits (B, T, V) of a new run's step-0 params for idx (B, T), and the run's config."""
    with Run(config, log=quiet) as run:
        return np.asarray(run.model.apply({"params": run.state.params}, idx)), run.config


def source_of_kind(kind: str, tmp_path, hf, small_text_file):
    """(SOURCE, data to train on, the source framework's logits for idx (B, T))."""
    if kind in ("hub", "save_pretrained"):
        directory, model = hf
        source = "gpt2" if kind == "hub" else directory
        return source, prepare_gpt2(small_text_file, tmp_path / "data"), lambda idx: hf_logits(model, idx)
    vocab = char_vocab(small_text_file)
    if kind == "run":
        source = tmp_path / "source_run"
        config = TrainConfig(model=GPTConfig(**CHAR_SIZES), data_path=str(small_text_file), out_dir=str(source),
                             batch_size=4, max_iters=2, eval_interval=2, eval_iters=1, progress=False, sample_chars=0)
        train(config, log=quiet)
        saved_config, params, _ = checkpoint.load(source)
        model = build_model(saved_config.model)
        return source, small_text_file, lambda idx: np.asarray(model.apply({"params": params}, idx))
    layout = "lecture" if kind in ("lecture .pt", "converted") else "nanogpt"
    model = perturbed(torch_model(layout_config(layout, vocab_size=vocab, **CHAR_SIZES), layout))
    path = tmp_path / "model.pt"
    if kind == "nanogpt ckpt.pt":
        torch.save({"model": model.state_dict(), "model_args": {"n_head": 2, "n_layer": 2, "dropout": 0.0}}, path)
    else:
        torch.save(model.state_dict(), path)
    source = path
    if kind == "converted":
        source = tmp_path / "converted"
        convert_checkpoint(str(path), str(source), str(small_text_file))

    def reference(idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch_logits(model, torch.as_tensor(idx)).numpy()

    return source, small_text_file, reference


@pytest.mark.parametrize("kind", ["hub", "save_pretrained", "lecture .pt", "nanogpt ckpt.pt", "converted", "run"])
def test_every_source_kind_starts_with_the_source_frameworks_logits(kind, tmp_path, hf, small_text_file,
                                                                    monkeypatch):
    asked = use_hub_standin(monkeypatch, hf[0])
    source, data, reference = source_of_kind(kind, tmp_path, hf, small_text_file)
    config = start_config(tmp_path, source, data)
    block_size = BLOCK_SIZE if kind in ("hub", "save_pretrained") else CHAR_SIZES["block_size"]
    vocab = VOCAB_SIZE if kind in ("hub", "save_pretrained") else char_vocab(small_text_file)
    idx = np.random.default_rng(0).integers(0, vocab, (2, block_size))
    logits, run_config = started(config, idx)
    assert run_config.block_size == block_size  # the weights' context: 1024 was asked for, theirs is shorter
    assert run_config.model.vocab_size == vocab
    np.testing.assert_allclose(logits, reference(idx), rtol=1e-4, atol=1e-4)
    assert asked == (["openai-community/gpt2"] if kind == "hub" else [])
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert saved.init_from == str(source) and saved.model == run_config.model


def test_a_smaller_block_size_crops_the_position_table(tmp_path, hf, gpt2_data):
    directory, model = hf
    config = start_config(tmp_path, directory, gpt2_data, model=GPTConfig(block_size=8, dropout=0.1))
    idx = np.random.default_rng(1).integers(0, VOCAB_SIZE, (2, 8))
    logits, run_config = started(config, idx)
    assert run_config.block_size == 8 and run_config.model.dropout == 0.1 and run_config.model.n_layer == 2
    np.testing.assert_allclose(logits, hf_logits(model, idx), rtol=1e-4, atol=1e-4)


def test_fine_tuning_lowers_the_loss_and_resumes_from_its_own_checkpoint(tmp_path, hf, gpt2_data, monkeypatch):
    directory, _ = hf
    out = tmp_path / "finetune"
    argv = [f"--init_from={directory}", f"--data_path={gpt2_data}", f"--out_dir={out}", "--batch_size=8",
            "--block_size=32", "--dropout=0.1", "--learning_rate=3e-3", "--max_iters=12", "--eval_interval=6",
            "--eval_iters=4", "--progress=false", "--sample_chars=5"]
    run_cli(train_main, argv)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records]
    assert [r["step"] for r in records] == [0, 6, 12]
    assert all(np.isfinite([v for r in records for v in (r["train_loss"], r["val_loss"], r["val_bpb"])]))
    assert losses[-1] < losses[0] - 0.1, losses
    saved = TrainConfig.load(out / "config.json")
    assert saved.init_from == str(directory) and saved.model.n_layer == 2 and saved.model.tie_embeddings

    def no_second_load(source):
        raise AssertionError("a resumed run must continue from its checkpoint, not reload the weights")

    monkeypatch.setattr(pretrained, "load", no_second_load)
    run_cli(train_main, [f"--out_dir={out}", "--resume", "--max_iters=14", "--progress=false", "--sample_chars=0"])
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 14


def lecture_pt(path, vocab_size: int) -> str:
    torch.save(torch_model(layout_config("lecture", vocab_size=vocab_size, **CHAR_SIZES), "lecture").state_dict(),
               path)
    return str(path)


def refused_sources(tmp_path, small_text_file) -> dict[str, str]:
    """Sources that the refusals below start from, by the name the flags use."""
    hf_pt = tmp_path / "hf.pt"
    torch.save(torch_model(layout_config("hf", vocab_size=VOCAB_SIZE, **CHAR_SIZES), "hf").state_dict(), hf_pt)
    save_tiny_gpt2(tmp_path / "relu_gpt2", activation_function="relu")
    (tmp_path / "empty").mkdir()
    save_tiny_gpt2(tmp_path / "no_weights")
    for weights in (tmp_path / "no_weights").glob("*.safetensors"):
        weights.unlink()
    char_pt = lecture_pt(tmp_path / "char.pt", char_vocab(small_text_file))
    convert_checkpoint(char_pt, str(tmp_path / "char_run"), str(small_text_file))
    return {"HF_PT": str(hf_pt), "LECTURE_PT": lecture_pt(tmp_path / "lecture13.pt", 13),
            "RELU": str(tmp_path / "relu_gpt2"), "EMPTY": str(tmp_path / "empty"),
            "NO_WEIGHTS": str(tmp_path / "no_weights"),
            "CHAR_RUN": str(tmp_path / "char_run")}


@pytest.mark.parametrize(("flags", "message"), [
    (["--init_from=HF", "--n_layer=3", "--n_head=4"], "--n_head, --n_layer cannot be set with --init_from: the "
                                                      "model is the weights'"),
    (["--init_from=HF", "--resume"], "--init_from starts a new run from pretrained weights and --resume continues"),
    (["--init_from=HF", "--data_path=TEXT"], f"uses GPT-2's encoding ({VOCAB_SIZE} tokens) but TEXT holds character "
                                             "tokens ("),
    (["--init_from=HF", "--data_path=TEXT"], "python -m jaxgpt.prepare TEXT --tokenizer=gpt2 --out=DATA_DIR"),
    (["--init_from=CHAR_RUN"], "uses character tokens ("),
    (["--init_from=nowhere"], "'nowhere' is not pretrained weights: give gpt2, gpt2-medium, gpt2-large, gpt2-xl"),
    (["--init_from=HF_PT"], "is a hf state_dict, which does not record the number of heads; convert it first"),
    (["--init_from=LECTURE_PT", "--data_path=TEXT"], "has a vocabulary of 13 tokens but TEXT holds character tokens"),
    (["--init_from=RELU"], "activation_function='relu', which jaxgpt's GPT does not compute"),
    (["--init_from=EMPTY"], "is not a jaxgpt run directory: config.json is missing"),
    (["--init_from=NO_WEIGHTS"], "NO_WEIGHTS has a GPT-2 config.json but no weights (model.safetensors or "
                                 "pytorch_model.bin)"),
])
def test_refused_combinations_are_one_line_with_exit_status_2(flags, message, tmp_path, hf, gpt2_data,
                                                              small_text_file, capsys):
    names = {"HF": str(hf[0]), "TEXT": str(small_text_file), **refused_sources(tmp_path, small_text_file)}

    def substitute(text: str) -> str:
        for name in sorted(names, key=len, reverse=True):
            text = text.replace(name, names[name])
        return text

    out = tmp_path / "out"
    argv = [f"--data_path={gpt2_data}", f"--out_dir={out}", "--progress=false", *map(substitute, flags)]
    capsys.readouterr()  # what building the sources printed (transformers' progress bars)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and substitute(message) in err, err
    assert not out.exists()  # nothing written


def test_offline_with_nothing_cached_is_one_line_with_exit_status_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxgpt.train", "--init_from=gpt2", f"--out_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot get openai-community/gpt2 from the Hugging Face hub, and it is not "
                                  "in its cache (")
    assert "snapshot_download('openai-community/gpt2'" in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("matmuls", ["float32", "bfloat16"])
def test_bfloat16_weights_halve_the_memory_and_keep_the_logits_close(hf, matmuls):
    directory, model = hf
    config, params, _ = pretrained.load(str(directory))
    _, half, _ = pretrained.load(str(directory), "bfloat16")  # cast tensor by tensor while converting
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    nbytes = [sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree)) for tree in (params, half)]
    assert nbytes[1] * 2 == nbytes[0]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), half,
                                                         pretrained.cast_params(params, "bfloat16")))
    config = pretrained.for_inference(config, "bfloat16") if matmuls == "bfloat16" else config
    idx = np.random.default_rng(2).integers(0, VOCAB_SIZE, (2, BLOCK_SIZE))
    logits = np.asarray(build_model(config).apply({"params": half}, idx))
    assert logits.dtype == np.float32  # the residual stream and the output stay float32
    np.testing.assert_allclose(logits, hf_logits(model, idx), atol=0.1)
    with pytest.raises(UsageError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        pretrained.load(str(directory), "float16")


def test_a_gpt2model_file_as_on_the_hub_reads_with_its_mask_buffers(tmp_path, hf):
    directory, model = hf  # the hub's gpt2 is a GPT2Model file: no "transformer." prefix, masks saved as attn.bias
    tensors = {key: value.detach().numpy().copy() for key, value in model.transformer.state_dict().items()}
    mask = np.tril(np.ones((1, 1, BLOCK_SIZE, BLOCK_SIZE), np.float32))
    tensors |= {f"h.{i}.attn.bias": mask for i in range(2)}
    save_file(tensors, tmp_path / "model.safetensors")
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    config, params, tokenizer = pretrained.load(str(tmp_path))
    assert config.tie_embeddings and tokenizer.kind == "tiktoken"
    idx = np.random.default_rng(3).integers(0, VOCAB_SIZE, (2, BLOCK_SIZE))
    np.testing.assert_allclose(np.asarray(build_model(config).apply({"params": params}, idx)), hf_logits(model, idx),
                               rtol=1e-4, atol=1e-4)
