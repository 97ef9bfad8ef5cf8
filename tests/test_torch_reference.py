"""jaxgpt.torch_reference.lecture's training loop (`train_lecture`, gpt.py's loop), which benchmarks compare with."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from jaxgpt.torch_reference.lecture import train_lecture  # noqa: E402

TINY = {"batch_size": 4, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0,
        "learning_rate": 1e-2, "eval_iters": 2}


def test_train_lecture_evaluates_where_gpt_py_does_and_reports_each(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    reported = []
    evaluations = train_lecture(text, **TINY, max_iters=7, eval_interval=3, seed=0,
                                on_eval=lambda step, losses: reported.append((step, losses)))
    assert list(evaluations) == [0, 3, 6]  # every eval_interval steps and at the last (gpt.py's condition)
    assert reported == list(evaluations.items())
    assert all(set(losses) == {"train", "val"} for losses in evaluations.values())


def test_train_lecture_is_seeded_and_learns(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    runs = [train_lecture(text, **{**TINY, "eval_iters": 8}, max_iters=60, eval_interval=59, seed=3)
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][59]["train"] < runs[0][0]["train"] - 0.5


def test_train_lecture_under_autocast_runs_its_products_in_bfloat16(shakespeare_path):
    """gpu_run.py's torch case runs the loop under bfloat16 autocast (as nanoGPT trains on a GPU); here on the CPU."""
    text = shakespeare_path.read_text(encoding="utf-8")[:20_000]
    plain, autocast = (train_lecture(text, **TINY, max_iters=3, eval_interval=2, seed=0, autocast_dtype=dtype)
                       for dtype in (None, torch.bfloat16))
    assert list(autocast) == [0, 2]
    assert autocast[0]["val"] != plain[0]["val"]  # bfloat16 products round differently
    assert autocast[0]["val"] == pytest.approx(plain[0]["val"], abs=0.05)
