"""The PyTorch models each conversion layout comes from, built for a GPTConfig, and shared parity helpers.

Besides the conversion layouts ("lecture", "nanogpt", "hf"), "modern" is jaxgpt/torch_reference/modern.py: every
GPTConfig switch, its params mapped by the reference's own `jaxgpt_state_dict` rather than by jaxgpt.weights.convert.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import init_params
from jaxgpt.torch_reference import modern
from jaxgpt.torch_reference.lecture import GPTLanguageModel
from jaxgpt.torch_reference.nanogpt import GPT as NanoGPT
from jaxgpt.torch_reference.nanogpt import NanoGPTConfig
from jaxgpt.weights.convert import LAYOUT_FIELDS, to_torch_state_dict

torch.set_default_dtype(torch.float32)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # the models are tiny: threads only add overhead on a busy CI machine


def layout_config(layout: str, *, bias: bool = True, tie_embeddings: bool = True, **sizes) -> GPTConfig:
    """A GPTConfig the layout can express; `bias` matters for nanoGPT and `tie_embeddings` for nanoGPT and HF."""
    fields = dict(LAYOUT_FIELDS[layout])
    if layout == "nanogpt":
        fields.update(bias=bias, qkv_bias=bias)
    if layout != "lecture":
        fields["tie_embeddings"] = tie_embeddings
    return GPTConfig(**sizes, **fields)


def torch_model(config: GPTConfig, layout: str) -> torch.nn.Module:
    """The layout's PyTorch model with `config`'s sizes and dropout (its own random init)."""
    if layout == "modern":
        fields = dataclasses.fields(modern.ModernConfig)
        return modern.GPT(modern.ModernConfig(**{f.name: getattr(config, f.name) for f in fields}))
    if layout == "lecture":
        return GPTLanguageModel(config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd,
                                config.dropout)
    if layout == "nanogpt":
        assert config.tie_embeddings, "nanoGPT ties lm_head to the token embedding"
        return NanoGPT(NanoGPTConfig(block_size=config.block_size, vocab_size=config.vocab_size,
                                     n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                     dropout=config.dropout, bias=config.bias))
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new",
                           resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                           layer_norm_epsilon=config.layer_norm_eps, tie_word_embeddings=config.tie_embeddings,
                           bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    return GPT2LMHeadModel(hf_config)


def torch_state_dict(params, config: GPTConfig, layout: str) -> dict[str, torch.Tensor]:
    """jaxgpt params (or gradients) under the layout's PyTorch names: a state_dict that loads strictly."""
    if layout == "modern":
        return modern.jaxgpt_state_dict(params, config.tie_embeddings)
    return to_torch_state_dict(params, config, layout)


def torch_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) at every position, whichever reference `model` is."""
    out = model(idx)
    if isinstance(model, GPTLanguageModel):
        return out[0]
    return out.logits if isinstance(model, GPT2LMHeadModel) else out


def torch_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient under its state_dict name (a tied weight once, under its first name)."""
    return {name: p.grad for name, p in model.named_parameters()}


def random_params(config: GPTConfig, rng: np.random.Generator, scale: float) -> dict:
    """jaxgpt params of `config` drawn from N(0, scale^2) (LayerNorm scales around 1), without compiling an init."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))

    def draw(path, leaf):
        values = rng.normal(0.0, scale, leaf.shape) + (1.0 if path[-1].key == "scale" else 0.0)
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
