"""Every script in benchmarks/ runs end to end on a tiny model, so none of them rots unnoticed.

The figures they print here mean nothing (tiny sizes, a shared CI machine); the checks are that each script
finishes and prints the table or summary it exists for. Real measurements: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt.system.targets import TARGETS, missing_library

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MISSING = [problem for name in ("tpu-v5e-1", "h100-1") if (problem := missing_library(TARGETS[name]))]
NEEDS_TPU_AND_GPU = pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--batch_size=4"]


def run_script(name: str, *args: str, data_path: str, smoke: bool = False) -> str:
    env = {**os.environ, "JAXGPT_DATA": data_path, "JAXGPT_SMOKE": "1" if smoke else "0"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.parametrize("name, args, expected", [
    # the two modes, each with one of the two PyTorch implementations
    ("train_speed.py", ["--configs=tiny", "--rounds=1", "--seconds=0.05", "--impls=torch nanoGPT", *TINY],
     "x the faster PyTorch variant"),
    ("train_speed.py", ["--configs=tiny", "--rounds=1", "--seconds=0.05", "--one_at_a_time", "--impls=torch lecture",
                        *TINY], "summary: tiny: jaxgpt is"),
    ("profile_step.py", ["--config=tiny", "--steps=2", *TINY], "by pass:"),
    ("checkpoint_overhead.py", ["--repeats=1", "--configs=tiny"], "save blocks"),
    ("train_small_vs_lecture.py", ["--max_iters=20", "--eval_interval=10", "--eval_iters=2"],
     "jaxgpt wall time / lecture wall time"),
    ("recipe_vs_lecture.py", ["--max_iters=20", "--eval_interval=10", "--eval_iters=2"], "nanoGPT"),
    ("generate_speed.py", ["--repeats=1"], "weights-only floor"),
    ("generate_speed.py", ["--repeats=1", "--rolling"], "rolling / recompute"),
    ("rolling_drift.py", ["--config=tiny", "--max_iters=20", "--streams=4", "--windows=2"], "top-1 agree"),
    ("vs_nanogpt.py", ["--sizes=xs", "--rounds=1", "--max_iters=10", "--eval_iters=2"],
     "jaxgpt speed / nanoGPT-style speed"),
    ("speedrun.py", ["--rounds=1", "--nanogpt_iters=10", "--max_iters=10", "--eval_interval=10", *TINY],
     "of nanoGPT's recipe (target <= 0.333)"),
    # the steps of speedrun.py's run above: the unablated run reuses its compiled programs
    ("ablation.py", ["--options=muon", "--max_iters=10", "--eval_interval=10", *TINY], "without muon"),
    ("tokenizer_speed.py", ["--vocab_sizes=300", "--big_megabytes=0.2", "--repeats=1"], "summary: pieces of"),
    ("prepare_big.py", ["--megabytes=2", "--files=3", "--vocab_size=300"], "open_prepared(verify=True)"),
    ("data_wait.py", ["--sizes=tiny", "--steps=tiny:20"], "wait share"),
    ("bpb_by_tokenizer.py", ["--config=tiny", "--seconds=2", "--tokenizers=bpe:300", "--eval_iters=1"],
     "val_bpb"),
    ("finetune_cpu.py", ["--n_layer=1", "--n_head=2", "--n_embd=16", "--n_positions=32", "--vocab_size=300",
                         "--batch_size=2", "--block_size=16", "--steps=2", "--eval_tokens=64"],
     "s per step (median of 2"),
    # compiled for a TPU and a GPU without them (the tpu and cuda extras)
    pytest.param("compile_targets.py", ["--flags=--config=tiny --sample_chars=0", "--targets=tpu-v5e-1",
                                        "--out=/dev/null"], "| `--config=tiny --sample_chars=0` | tpu-v5e-1 | yes |",
                 marks=NEEDS_TPU_AND_GPU),
    pytest.param("attention_memory.py", ["--config=tiny", "--block_sizes=128"], "| h100-1 | 128 |",
                 marks=NEEDS_TPU_AND_GPU),
])
def test_benchmark_script_runs(name, args, expected, shakespeare_path):
    out = run_script(name, *args, data_path=str(shakespeare_path), smoke=name == "generate_speed.py")
    assert expected in out, out[-3000:]


def test_gpu_run_trains_a_tiny_model_here(tmp_path, shakespeare_path):
    """gpu_run.py's cases are sized for a GPU (RESULTS.md, "On an H200"); its jaxgpt case runs anywhere."""
    out = run_script("gpu_run.py", "--case=jaxgpt", "--", "--config=tiny", "--max_iters=2", "--eval_interval=1",
                     "--eval_iters=1", "--sample_chars=0", f"--out_dir={tmp_path}/run", data_path=str(shakespeare_path))
    assert "s] step 2: train loss" in out and "peak_bytes_in_use" in out
