"""What a training run starts from, settled once and in order: the weights (pretrained or none), the data, the
config resolved against both, then the state on the device mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import optax

from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import INIT_STREAM, stream_key
from jaxgpt.core.model import init_params
from jaxgpt.data.text import Dataset, load_dataset
from jaxgpt.run.step import TrainState
from jaxgpt.system.sharding import Placement
from jaxgpt.weights import pretrained


@dataclasses.dataclass(frozen=True)
class Start:
    """A run's starting point: its config, resolved once (the weights' model, the data's vocabulary, the "auto"
    choices for this backend), its data, and the pretrained params (cut to block_size) or None for a fresh init."""

    config: TrainConfig
    dataset: Dataset
    params: dict | None


def resolve_start(config: TrainConfig, log: Callable[[str], None]) -> Start:
    """Read the weights of `config.init_from` (a new run only: a resumed one continues from its checkpoint), then the
    data, checked to be tokenized as the weights were; resolve the config against both."""
    weights = pretrained.load(config.init_from) if config.init_from and not config.resume else None
    if weights:
        config = dataclasses.replace(config, model=pretrained.run_model(weights[0], config.model))
    dataset = load_dataset(config.data_path, config.block_size)
    params = None
    if weights:
        theirs, weights_params, tokenizer = weights  # (GPTConfig, params, tokenizer or None)
        pretrained.check_data_tokenizer(config.init_from, tokenizer, theirs.vocab_size,
                                        config.data_path or "the data", dataset.tokenizer)
        cropped = f" (cropped from {theirs.block_size})" if theirs.block_size > config.block_size else ""
        log(f"starting from {config.init_from}: {theirs.n_layer} layers, {theirs.n_head} heads, "
            f"n_embd {theirs.n_embd}, block_size {config.block_size}{cropped}")
        params = pretrained.crop_block_size(weights_params, config.model)
    return Start(config.for_vocab(dataset.tokenizer.vocab_size), dataset, params)


def initial_state(start: Start, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> tuple[TrainState,
                                                                                                   Placement]:
    """Step 0's state, each device holding only its own slices, and where every array lives on `mesh`: params
    drawn from the seed, or the pretrained ones."""
    if start.params is None:
        key = stream_key(start.config.seed, INIT_STREAM)
        init, args = (lambda: TrainState.fresh(init_params(start.config.model, key), tx)), ()
    else:
        init, args = (lambda params: TrainState.fresh(params, tx)), (start.params,)
    placement = Placement.for_state(mesh, jax.eval_shape(init, *args))
    return jax.jit(init, out_shardings=placement.state)(*args), placement
