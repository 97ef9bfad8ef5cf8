"""A jaxgpt model in other formats: a Hugging Face `save_pretrained` directory (GPT-2), or a PyTorch `.pt` (the
lecture's or nanoGPT's `state_dict`). The reverse of `jaxgpt.weights.pretrained.load` (the command is
`python -m jaxgpt.export`).

Hugging Face's GPT2LMHeadModel computes jaxgpt's GPT wherever the config keeps to GPT-2's design: learned
positions, LayerNorm, no QK-norm or soft-cap, and no bias on the output layer. Biases jaxgpt leaves out (`bias`,
`qkv_bias` false) are written as zeros, which compute the same. The tokenizer goes into `tokenizer.json` (the
`tokenizers` library's format, which transformers' AutoTokenizer reads): BPE and GPT-2 tokenizers as byte-level
BPE with their split pattern, the character tokenizer as one token per character.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import traverse_util

from jaxgpt.core.config import GPTConfig
from jaxgpt.data.tokenizers import CharTokenizer, TiktokenTokenizer, Tokenizer
from jaxgpt.system.errors import UsageError
from jaxgpt.system.files import staged
from jaxgpt.weights.convert import _TIED_HEAD, LAYOUT_FIELDS, to_layout_arrays

Format = Literal["hf", "pt"]
FORMATS: tuple[Format, ...] = ("hf", "pt")
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}  # transformers' names


def hf_problems(config: GPTConfig) -> list[str]:
    """What in `config` GPT2LMHeadModel cannot compute (empty: it maps exactly)."""
    problems = []
    if config.model_type != "gpt":
        problems.append(f"model_type={config.model_type!r} (GPT-2 is a transformer)")
    if config.position != "learned":
        problems.append(f"position={config.position!r} (GPT-2 learns a position table)")
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} (GPT-2 uses LayerNorm)")
    if config.qk_norm:
        problems.append("qk_norm=true (GPT-2 has no QK-norm)")
    if config.logit_softcap:
        problems.append(f"logit_softcap={config.logit_softcap:g} (GPT-2 has no soft-cap)")
    if config.lm_head_bias and not config.tie_embeddings:
        problems.append("lm_head_bias=true (GPT-2's output layer has no bias; the lecture's has)")
    return problems


def _with_zero_biases(params: dict, config: GPTConfig) -> dict:
    """`params` with the biases GPT-2 has and `config` leaves out (bias, qkv_bias false) added as zeros."""
    flat = traverse_util.flatten_dict(params, sep="/")
    C = config.n_embd
    widths = {"sa/query": C, "sa/key": C, "sa/value": C, "sa/proj": C, "ffwd/fc": 4 * C, "ffwd/proj": C,
              "ln1": C, "ln2": C}
    for i in range(config.n_layer):
        for module, width in widths.items():
            flat.setdefault(f"blocks_{i}/{module}/bias", np.zeros((width,), np.float32))
    flat.setdefault("ln_f/bias", np.zeros((C,), np.float32))
    return traverse_util.unflatten_dict(flat, sep="/")


def hf_state_dict(params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state_dict (float32 numpy; a tied lm_head left out, as save_pretrained does)."""
    if problems := hf_problems(config):
        raise UsageError(f"Hugging Face's GPT-2 cannot compute this model: {'; '.join(problems)}; export "
                         "--format=pt, or train without those options")
    gpt2_shaped = dataclasses.replace(config, **LAYOUT_FIELDS["hf"])  # the weights' layout; config.json says the rest
    arrays = to_layout_arrays(_with_zero_biases(params, config), gpt2_shaped, "hf")
    if config.tie_embeddings:
        del arrays[_TIED_HEAD]  # the token embedding's copy
    return arrays


def hf_config(config: GPTConfig, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """config.json for GPT2LMHeadModel computing `config`'s model."""
    eot = getattr(tokenizer, "eot_id", None)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_inner": 4 * config.n_embd,
        "activation_function": HF_ACTIVATIONS[config.activation], "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings, "torch_dtype": "float32",
        **({"bos_token_id": eot, "eos_token_id": eot} if eot is not None else {}),
    }


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: byte b as a printable character (itself where printable, else 256 + n)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def _merge_of(token: bytes, rank: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge makes `token`: its bytes merged by tiktoken's rule (lowest rank first) with
    only the tokens ranked before it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        ranked = [(rank.get(a + b, len(rank)), j) for j, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        best, j = min(ranked)
        if best >= rank[token]:
            break
        parts[j:j + 2] = [parts[j] + parts[j + 1]]
    if len(parts) != 2:
        raise UsageError(f"the tokenizer's token {token!r} is not the merge of two earlier tokens; it has no "
                         "Hugging Face BPE form")
    return parts[0], parts[1]


def hf_tokenizer(tokenizer: Tokenizer) -> Any:
    """`tokenizer` as a `tokenizers.Tokenizer` that encodes and decodes every text the same."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, CharTokenizer):
        hf = HFTokenizer(models.WordLevel({char: i for i, char in enumerate(tokenizer.chars)}, unk_token="[UNK]"))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
        hf.decoder = decoders.Fuse()
        return hf
    if not isinstance(tokenizer, TiktokenTokenizer):
        raise UsageError(f"a {tokenizer.kind} tokenizer has no Hugging Face form")
    symbols = _byte_symbols()
    spell = lambda token: "".join(symbols[b] for b in token)  # noqa: E731
    rank = {token: i for i, token in enumerate(tokenizer.ranks)}
    merges = [tuple(map(spell, _merge_of(token, rank))) for token in tokenizer.ranks if len(token) > 1]
    hf = HFTokenizer(models.BPE({spell(token): i for i, token in enumerate(tokenizer.ranks)}, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    for name, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1]):
        if hf.add_special_tokens([name]) != 1 or hf.token_to_id(name) != token_id:
            raise UsageError(f"the special token {name} cannot keep its id {token_id} in a Hugging Face tokenizer")
    return hf


def _tokenizer_config(tokenizer: Tokenizer, config: GPTConfig) -> dict[str, Any]:
    eot = next((name for name, i in getattr(tokenizer, "special_tokens", {}).items()
                if i == getattr(tokenizer, "eot_id", None)), None)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.block_size,
            "clean_up_tokenization_spaces": False,
            **({"bos_token": eot, "eos_token": eot} if eot else {})}


def write_hf(out: Path, params: dict, config: GPTConfig, tokenizer: Tokenizer | None) -> None:
    """A save_pretrained directory: config.json, model.safetensors and, with a tokenizer, tokenizer.json and
    tokenizer_config.json."""
    from safetensors.numpy import save_file

    arrays = hf_state_dict(params, config)
    hf = None if tokenizer is None else hf_tokenizer(tokenizer)
    (out / "config.json").write_text(json.dumps(hf_config(config, tokenizer), indent=2) + "\n", encoding="utf-8")
    save_file(arrays, str(out / "model.safetensors"), metadata={"format": "pt"})
    if hf is not None:
        hf.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(tokenizer, config), indent=2) + "\n", encoding="utf-8")


def pt_layout(config: GPTConfig) -> Literal["lecture", "nanogpt"]:
    """The PyTorch model that computes `config`'s: the lecture's gpt.py where it fits, else nanoGPT's."""
    fits = lambda layout: all(getattr(config, k) == v for k, v in LAYOUT_FIELDS[layout].items())  # noqa: E731
    if config.model_type == "gpt" and fits("lecture"):
        return "lecture"
    if config.model_type == "gpt" and fits("nanogpt") and config.qkv_bias == config.bias:
        return "nanogpt"
    needs = "; ".join(f"{layout}: " + ", ".join(f"{k}={v!r}" for k, v in LAYOUT_FIELDS[layout].items())
                      for layout in ("lecture", "nanogpt"))
    raise UsageError(f"no PyTorch model jaxgpt knows computes this model (the lecture's gpt.py and nanoGPT need {needs}"
                     f"{'; nanoGPT also qkv_bias = bias' if fits('nanogpt') else ''})")


def write_pt(out: Path, params: dict, config: GPTConfig) -> str:
    """`.pt` of the lecture's state_dict, or nanoGPT's ckpt.pt ({"model", "model_args"}); returns the layout."""
    try:
        import torch
    except ImportError:
        raise UsageError("--format=pt needs PyTorch: pip install torch") from None
    from jaxgpt.weights.convert import to_torch_state_dict

    layout = pt_layout(config)
    state_dict = to_torch_state_dict(params, config, layout)
    if layout == "nanogpt":
        model_args = {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
                      "block_size": config.block_size, "bias": config.bias, "vocab_size": config.vocab_size,
                      "dropout": 0.0}
        state_dict = {"model": state_dict, "model_args": model_args}
    torch.save(state_dict, out)
    return layout


def export(params: dict, config: GPTConfig, tokenizer: Tokenizer | None, out: str | os.PathLike, fmt: Format,
           overwrite: bool = False) -> str:
    """Write the model to `out` (a directory for hf, a file for pt), whole or not at all; a one-line summary."""
    out = Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not empty; choose another OUT or pass --overwrite")
    with staged(out) as staging:
        if fmt == "hf":
            staging.mkdir()
            write_hf(staging, params, config, tokenizer)
            what = "a Hugging Face GPT-2 directory"
        else:
            layout = write_pt(staging, params, config)
            what = f"the {'lecture' if layout == 'lecture' else 'nanoGPT'}'s .pt"
    return f"wrote {what} to {out}"
