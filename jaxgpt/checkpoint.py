"""Saving and loading what a run directory holds: config.json, tokenizer.json and params (orbax)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxgpt.config import TrainConfig
from jaxgpt.data import CharTokenizer
from jaxgpt.errors import UsageError

PARAMS_DIR = "params"


def save_params(out_dir: str | os.PathLike, params) -> None:
    """Write the final parameters to OUT_DIR/params (orbax, written atomically)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(out_dir).absolute() / PARAMS_DIR, params, force=True)


def load(out_dir: str | os.PathLike) -> tuple[TrainConfig, dict, CharTokenizer]:
    """(config, params, tokenizer) of a finished run, for sampling and notebooks."""
    out_dir = Path(out_dir).absolute()
    for name in ("config.json", "tokenizer.json", PARAMS_DIR):
        if not (out_dir / name).exists():
            raise UsageError(f"{out_dir} is not a jaxgpt run directory: {name} is missing")
    config = TrainConfig.load(out_dir / "config.json")
    with ocp.StandardCheckpointer() as checkpointer:
        # onto this process's first device, whatever mesh the run was sharded over
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = checkpointer.metadata(out_dir / PARAMS_DIR).item_metadata
        target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
        params = checkpointer.restore(out_dir / PARAMS_DIR, target)
    return config, params, CharTokenizer.load(out_dir / "tokenizer.json")
