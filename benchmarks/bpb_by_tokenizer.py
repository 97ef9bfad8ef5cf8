"""Character tokens against BPE at equal training time, on one scale: bits per UTF-8 byte of the val text.

    python benchmarks/bpb_by_tokenizer.py [--data_path=input.txt] [--config=small] [--seconds=180]
                                          [--tokenizers=char,bpe:512,bpe:2048] [--field=value ...]

Prepares the text with each tokenizer (python -m jaxgpt.prepare: the same documents, the last 10% as val), measures
the config's time per step on each, sets max_iters so that training takes about --seconds, trains (the schedule
ends there), and reports the run's wall time (building, compiling, training and the evaluation), the val loss per
token and per byte over the whole val split (eval_mode=full), and a sample of each model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from jaxgpt.system.allocator import keep_freed_memory

keep_freed_memory()  # as the command lines do, before JAX starts its threads

from jaxgpt.cli import parse_train_args  # noqa: E402
from jaxgpt.data.text import resolve_data_path  # noqa: E402
from jaxgpt.data.writer import prepare  # noqa: E402
from jaxgpt.run.training import Run  # noqa: E402

CALIBRATION_CALLS = 5


def seconds_per_step(config) -> tuple[float, int]:
    """The config's training time per step on its data, after compilation (a few compiled calls), and the steps
    per compiled call it ran."""
    with Run(dataclasses.replace(config, max_iters=10**6, eval_interval=10**6), log=lambda _: None) as run:
        run.step()  # compiles
        float(run.step())
        started = time.perf_counter()
        for _ in range(CALIBRATION_CALLS):
            loss = run.step()
        float(loss)
        return (time.perf_counter() - started) / (CALIBRATION_CALLS * run.steps_per_call), run.steps_per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", help="the text (default: tiny Shakespeare as jaxgpt.train finds it)")
    parser.add_argument("--seconds", type=float, default=180.0, help="training time of each run")
    parser.add_argument("--tokenizers", default="char,bpe:512,bpe:2048", help="char, bpe:VOCAB, ...")
    args, rest = parser.parse_known_args()
    base = parse_train_args(rest)  # --config=small unless given
    text = resolve_data_path(args.data_path)
    print(f"text: {text}  date: {time.strftime('%Y-%m-%d %H:%M')}  training time per run: {args.seconds:.0f} s")
    rows, samples = [], {}
    with tempfile.TemporaryDirectory() as work:
        for choice in args.tokenizers.split(","):
            kind, _, vocab = choice.partition(":")
            data_dir = Path(work) / choice.replace(":", "_")
            prepare([str(text)], data_dir, tokenizer=kind, vocab_size=int(vocab) if vocab else None, progress=False,
                    log=lambda _: None)
            config = dataclasses.replace(base, data_path=str(data_dir), out_dir=str(Path(work) / f"run_{kind}{vocab}"),
                                         eval_at_start=False, eval_mode="full", progress=False, sample_chars=0,
                                         checkpoint_interval=10**6)
            per_step, per_call = seconds_per_step(dataclasses.replace(config, out_dir=config.out_dir + "_calibration"))
            steps = max(1, round(args.seconds / per_step / per_call)) * per_call  # whole calls: the calibrated program
            config = dataclasses.replace(config, max_iters=steps, eval_interval=steps)
            started = time.perf_counter()
            with Run(config, log=lambda _: None) as run:
                run.fit()
                seconds = time.perf_counter() - started
                record = run.history[-1]
                samples[choice] = run.sample_text(300)
                vocab_size = run.config.model.vocab_size
            rows.append((choice, vocab_size, steps, seconds, 1e3 * per_step, record["val_loss"], record["val_bpb"]))
            print(f"{choice}: {steps} steps in {seconds:.0f} s, val_bpb {record['val_bpb']:.4f}", file=sys.stderr)
    print(f"\n{'tokenizer':10} {'vocab':>6} {'steps':>6} {'run s':>8} {'ms/step':>8} {'val loss/token':>15} "
          f"{'val_bpb':>8}")
    for choice, vocab_size, steps, seconds, ms, loss, bpb in rows:
        print(f"{choice:10} {vocab_size:6d} {steps:6d} {seconds:8.0f} {ms:8.1f} {loss:15.4f} {bpb:8.4f}")
    for choice, sample in samples.items():
        print(f"\n--- sample, {choice} ---\n{sample}")


if __name__ == "__main__":
    main()
