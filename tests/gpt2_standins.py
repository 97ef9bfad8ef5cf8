"""Offline stand-ins for GPT-2: a tiny tiktoken Encoding for GPT-2's encoding and a small random
`GPT2LMHeadModel` saved with `save_pretrained` for the Hugging Face hub's weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tiktoken
import torch

from jaxgpt.data.tokenizers import EOT
from jaxgpt.data.writer import prepare
from jaxgpt.weights import pretrained

if TYPE_CHECKING:  # transformers takes seconds to import: only the tests that build a model pay for it
    from transformers import GPT2LMHeadModel

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BLOCK_SIZE = 32  # the stand-in's n_positions


def tiny_gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's encoding in miniature: the 256 bytes, four merges and the end-of-text token (261 tokens)."""
    ranks = {bytes([i]): i for i in range(256)} | {b"th": 256, b"the": 257, b" the": 258, b"er": 259}
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 260})


VOCAB_SIZE = tiny_gpt2_encoding().n_vocab


def use_tiny_gpt2_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tokenizers.gpt2_tokenizer()` gets the tiny encoding (tiktoken's own lookup is the seam)."""
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: tiny_gpt2_encoding())


def tiny_gpt2(seed: int = 0, **changes) -> GPT2LMHeadModel:
    """A small random GPT-2 with GPT-2's vocabulary stand-in; every parameter drawn from N(0, 0.1^2) (LayerNorm
    scales around 1), so that nothing is left at an init that hides mistakes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    settings = {"vocab_size": VOCAB_SIZE, "n_positions": BLOCK_SIZE, "n_embd": 32, "n_layer": 2, "n_head": 2,
                "bos_token_id": None, "eos_token_id": None, "attn_implementation": "eager", **changes}
    model = GPT2LMHeadModel(GPT2Config(**settings)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(1.0 if ".ln_" in name and name.endswith(".weight") else 0.0, 0.1)
    return model


def save_tiny_gpt2(directory: Path, **changes) -> GPT2LMHeadModel:
    """`tiny_gpt2(**changes)` saved with save_pretrained into `directory` (config.json, model.safetensors)."""
    model = tiny_gpt2(**changes)
    model.save_pretrained(directory)
    return model


def use_hub_standin(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[str]:
    """The hub lookup returns `directory`; returns the repositories asked for."""
    asked: list[str] = []

    def snapshot(repo_id: str) -> Path:
        asked.append(repo_id)
        return directory

    monkeypatch.setattr(pretrained, "hub_snapshot", snapshot)
    return asked


def prepare_gpt2(text_file: Path, out: Path) -> Path:
    """A dataset of `text_file` tokenized with GPT-2's encoding (the stand-in, when it is in use)."""
    prepare([str(text_file)], out, tokenizer="gpt2", progress=False, log=lambda _: None)
    return out


def hf_logits(model: GPT2LMHeadModel, idx: np.ndarray) -> np.ndarray:
    """The Hugging Face model's logits (B, T, V) for token ids idx (B, T)."""
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(idx), dtype=torch.long)).logits.numpy()


# Fixtures (a pytest plugin: tests/conftest.py). Modules that use the stand-ins mark themselves
# `pytestmark = pytest.mark.usefixtures("gpt2_encoding")`.

@pytest.fixture
def gpt2_encoding(monkeypatch):
    """tiktoken's GPT-2 encoding is the tiny one for the test."""
    use_tiny_gpt2_encoding(monkeypatch)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(save_pretrained directory, the transformers model saved there)."""
    directory = tmp_path_factory.mktemp("gpt2")
    return directory, save_tiny_gpt2(directory)


@pytest.fixture
def gpt2_data(tmp_path, small_text_file):
    """The small text prepared with (the stand-in of) GPT-2's encoding."""
    return prepare_gpt2(small_text_file, tmp_path / "gpt2_data")
