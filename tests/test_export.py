"""`python -m jaxgpt.export` (jaxgpt/weights/export.py): Hugging Face directories that transformers loads with
the same logits and tokens, the lecture's and nanoGPT's .pt round trips, and one-line refusals."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
from gpt2_standins import tiny_gpt2_encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_models import random_params
from transformers import AutoModelForCausalLM, AutoTokenizer

from jaxgpt import export as cli_export
from jaxgpt.cli import run_cli
from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.model import GPT
from jaxgpt.data.tokenizers import CharTokenizer, TiktokenTokenizer, train_bpe
from jaxgpt.store.checkpoint import save_params
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError
from jaxgpt.weights import pretrained
from jaxgpt.weights.export import export, hf_problems, hf_tokenizer

SIZES = {"vocab_size": 37, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}


def jax_logits(config: GPTConfig, params, idx: np.ndarray) -> np.ndarray:
    return np.asarray(GPT(config).apply({"params": params}, idx))


def hf_logits_of(directory, idx: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.as_tensor(idx, dtype=torch.long)).logits.numpy()


@st.composite
def gpt2_shaped_configs(draw) -> GPTConfig:
    """Configs GPT2LMHeadModel computes: any activation, with or without biases, tied or not (then no head bias)."""
    return GPTConfig(**SIZES, activation=draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "relu2"])),
                     bias=draw(st.booleans()), qkv_bias=draw(st.booleans()), tie_embeddings=draw(st.booleans()),
                     lm_head_bias=False, layer_norm_eps=draw(st.sampled_from([1e-5, 1e-6])))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gpt2_shaped_configs(), st.integers(0, 2**32 - 1))
def test_hf_export_loads_in_transformers_with_the_same_logits(tmp_path_factory, config, seed):
    rng = np.random.default_rng(seed)
    params = random_params(config, rng, 0.1)
    out = tmp_path_factory.mktemp("hf") / "model"
    export(params, config, None, out, "hf")
    idx = rng.integers(0, config.vocab_size, (2, config.block_size))
    np.testing.assert_allclose(hf_logits_of(out, idx), jax_logits(config, params, idx), rtol=1e-4, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] == config.tie_embeddings


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcödé ✓ 123 4567"


TOKENIZERS = {"char": CharTokenizer.from_text(TEXT + "xyz"),
              "gpt2": TiktokenTokenizer.from_encoding(tiny_gpt2_encoding()),
              "bpe": train_bpe([TEXT * 3], 300)}


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=sorted(set(TEXT + "xyz")), max_size=60) | st.sampled_from([TEXT, " the there", "\n\n"]))
def test_hf_tokenizer_encodes_and_decodes_as_jaxgpts(kind, text):
    ours = TOKENIZERS[kind]
    theirs = hf_tokenizer(ours)
    ids = theirs.encode(text).ids
    assert ids == ours.encode(text)
    assert theirs.decode(ids) == text


def test_hf_directory_has_a_tokenizer_that_autotokenizer_reads(tmp_path):
    ours = TOKENIZERS["gpt2"]
    config = GPTConfig(**{**SIZES, "vocab_size": ours.vocab_size}, activation="gelu_tanh", tie_embeddings=True,
                       lm_head_bias=False, qkv_bias=True)
    export(random_params(config, np.random.default_rng(0), 0.1), config, ours, tmp_path / "out", "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded(TEXT)["input_ids"] == ours.encode(TEXT)
    assert loaded.eos_token == "<|endoftext|>" and loaded.eos_token_id == ours.eot_id


@pytest.mark.parametrize(("changes", "named"), [
    ({}, "lm_head_bias=true"),  # the lecture's model
    ({"position": "rope", "norm": "rmsnorm", "qk_norm": True, "lm_head_bias": False},
     "position='rope' (GPT-2 learns a position table); norm='rmsnorm' (GPT-2 uses LayerNorm); qk_norm=true"),
    ({"logit_softcap": 30.0, "lm_head_bias": False}, "logit_softcap=30"),
])
def test_what_gpt2_cannot_compute_is_refused_with_one_line(tmp_path, changes, named):
    config = GPTConfig(**SIZES, **changes)
    assert hf_problems(config)
    with pytest.raises(UsageError, match=r"^Hugging Face's GPT-2 cannot compute this model: .*" + named.replace(
            "(", r"\(").replace(")", r"\)")):
        export(random_params(config, np.random.default_rng(0), 0.1), config, None, tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("config", [
    GPTConfig(**SIZES),  # the lecture's: gpt.py's state_dict
    GPTConfig(**SIZES, activation="gelu", tie_embeddings=True, bias=False, lm_head_bias=False),  # nanoGPT's
])
def test_pt_export_reads_back_as_the_same_model(tmp_path, config):
    params = random_params(config, np.random.default_rng(1), 0.1)
    out = tmp_path / "model.pt"
    summary = export(params, config, None, out, "pt")
    read_config, read_params, _ = pretrained.load(str(out))
    assert dataclasses.replace(read_config, dropout=0.0) == config
    jax.tree.map(np.testing.assert_array_equal, read_params, params)
    assert ("lecture" in summary) == config.lm_head_bias


def test_pt_refuses_a_model_no_pytorch_reference_computes(tmp_path):
    config = GPTConfig(**SIZES, position="rope")
    with pytest.raises(UsageError, match=r"^no PyTorch model jaxgpt knows computes this model"):
        export(random_params(config, np.random.default_rng(0), 0.1), config, None, tmp_path / "m.pt", "pt")


@pytest.fixture
def run_dir(tmp_path):
    """A converted-style run directory (params, config, a char tokenizer) of a GPT-2-shaped model."""
    tokenizer = CharTokenizer.from_text(TEXT)
    config = GPTConfig(**{**SIZES, "vocab_size": tokenizer.vocab_size}, activation="gelu", lm_head_bias=False)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(TrainConfig(model=config, out_dir=str(run.path)))
    run.write_tokenizer(tokenizer)
    params = random_params(config, np.random.default_rng(2), 0.1)
    save_params(run, params, config)
    return run.path, config, params, tokenizer


def test_cli_exports_a_run_that_transformers_runs(run_dir, tmp_path, capsys):
    path, config, params, tokenizer = run_dir
    cli_export.main([str(path), str(tmp_path / "hf")])
    assert capsys.readouterr().out.startswith(f"wrote a Hugging Face GPT-2 directory to {tmp_path / 'hf'}")
    idx = np.asarray([tokenizer.encode(TEXT[:SIZES["block_size"]])])
    np.testing.assert_allclose(hf_logits_of(tmp_path / "hf", idx), jax_logits(config, params, idx), rtol=1e-4,
                               atol=1e-4)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXT)["input_ids"] == tokenizer.encode(TEXT)


def test_cli_mistakes_are_one_line(run_dir, tmp_path, capsys):
    path, *_ = run_dir
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    for argv, message in (
            ([str(path), str(tmp_path / "full")], "exists and is not empty; choose another OUT or pass --overwrite"),
            ([str(tmp_path / "nothing"), str(tmp_path / "o")], "is not pretrained weights"),
            ([str(path), str(tmp_path / "o"), "--format=onnx"], "invalid choice: 'onnx'")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(cli_export.main, argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_push_without_the_hub_is_one_line_and_keeps_the_export(run_dir, tmp_path, capsys, monkeypatch):
    """--push cannot be tried against the hub here (no network): offline, it fails with one line, exit 1, and the
    exported directory is complete."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, *_ = run_dir
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli_export.main, [str(path), str(tmp_path / "hf"), "--push=someone/model"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: uploading {tmp_path / 'hf'} to the hub repository someone/model failed (")
    assert err.endswith(f"the export itself is complete in {tmp_path / 'hf'}") and "\n" not in err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                     "tokenizer.json", "tokenizer_config.json"]
