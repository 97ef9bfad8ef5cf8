"""The train step's health numbers (`health_metrics`): gradient norm, clipped steps and update/param ratios, against
a hand computation on `tiny`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.core.config import load_config
from jaxgpt.core.losses import cross_entropy
from jaxgpt.run.training import Run


def run_config(tmp_path, data_path, **overrides):
    model = dataclasses.replace(load_config("tiny").model, dropout=0.0)
    settings = {"model": model, "data_path": str(data_path), "out_dir": str(tmp_path / "run"), "progress": False,
                "sample_chars": 0, "steps_per_call": 1, "max_iters": 4, "eval_interval": 2, "eval_iters": 1}
    return dataclasses.replace(load_config("tiny"), **{**settings, **overrides})


def rms(tree) -> float:
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(tree)]
    return float(np.sqrt(sum((leaf ** 2).sum() for leaf in leaves) / sum(leaf.size for leaf in leaves)))


def test_health_equals_a_hand_computation_of_the_step(tmp_path, small_text_file):
    config = run_config(tmp_path, small_text_file, grad_clip=1e9)
    with Run(config, log=lambda _: None) as run:
        trainer = run.trainer
        before = jax.device_get(run.state.params)
        windows = trainer.batches.windows(trainer.batches.step_input(0, 1), jnp.arange(1))[0, 0]  # (B, T + 1)
        grads = jax.grad(lambda p: cross_entropy(run.model.apply({"params": p}, windows[:, :-1]), windows[:, 1:]))(
            before)
        run.step()
        after = jax.device_get(run.state.params)
        health = trainer.health()
    norm = np.sqrt(sum((np.asarray(g, np.float64) ** 2).sum() for g in jax.tree_util.tree_leaves(grads)))
    assert health["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert health["clipped_fraction"] == 0.0
    assert sorted(k for k in health if k.startswith("update_ratio/")) == sorted(f"update_ratio/{g}" for g in before)
    for group in before:
        update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, after[group], before[group])
        assert health[f"update_ratio/{group}"] == pytest.approx(rms(update) / rms(before[group]), rel=1e-4)


@pytest.mark.parametrize("grad_clip, fraction", [(1e-6, 1.0), (1e9, 0.0), (0.0, None)])
def test_the_clipped_fraction_counts_the_steps_since_the_last_evaluation(tmp_path, small_text_file, grad_clip,
                                                                         fraction):
    config = run_config(tmp_path, small_text_file, grad_clip=grad_clip)
    with Run(config, log=lambda _: None) as run:
        run.fit()
        records = run.history
    assert [r["step"] for r in records] == [0, 2, 4]
    assert "grad_norm" not in records[0]  # no step yet
    for record in records[1:]:
        assert record["clipped_fraction"] == fraction and record["grad_norm"] > 0


def test_health_metrics_off_records_none_of_them(tmp_path, small_text_file):
    with Run(run_config(tmp_path, small_text_file, health_metrics=False), log=lambda _: None) as run:
        run.fit()
        assert not any(key.startswith(("grad_norm", "update_ratio", "clipped")) for key in run.history[-1])
