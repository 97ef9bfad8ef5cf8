"""Where the time of one jaxgpt training step goes on this machine, by pass and by model component.

    python benchmarks/profile_step.py --config=small [--steps=50] [--field=value ...]

Traces `--steps` calls of the compiled train step (the one `jaxgpt.train` uses) with `jax.profiler`,
maps every executed XLA op back to the JAX operation it came from (HLO `op_name` metadata) and sums the
op time over all threads: forward, backward, optimizer, and batch/PRNG; then the heaviest components
(`blocks_*/sa/query/dot_general`, ...). Times are per step; "op time" counts busy time on every thread,
so with 2 threads it can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

from jaxgpt.system.allocator import keep_freed_memory

keep_freed_memory()  # as the command lines do, before JAX starts its threads

import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from jaxgpt.cli import parse_train_args  # noqa: E402
from jaxgpt.run.training import Run  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", re.MULTILINE)


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op_name it was lowered from."""
    return {name: op for name, op in _INSTRUCTION.findall(hlo_text)}


def classify(op_name: str) -> tuple[str, str]:
    """(pass, component) of a JAX op_name such as `jit(train_step)/transpose(jvp(GPT))/blocks_3/sa/mul`."""
    if "threefry" in op_name or "randint" in op_name or "bernoulli" in op_name:
        pass_ = "batch + PRNG"
    elif "transpose(jvp(" in op_name:
        pass_ = "backward"
    elif "jvp(" in op_name:
        pass_ = "forward"
    elif op_name.endswith("/gather"):
        pass_ = "batch + PRNG"
    else:
        pass_ = "optimizer"
    component = re.sub(r"blocks_\d+", "blocks_*", op_name.split("GPT)")[-1].split("GPT))")[-1].lstrip(")/"))
    if pass_ in ("optimizer", "batch + PRNG"):
        component = pass_
    return pass_, component


def trace_op_times(run: Run, calls: int) -> tuple[dict[str, float], float, float]:
    """`calls` train-step calls under the profiler: (op time in seconds per XLA op name, wall s, process CPU s)."""
    with tempfile.TemporaryDirectory() as trace_dir:
        wall, cpu = time.perf_counter(), time.process_time()
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                loss = run.step()
            jax.block_until_ready(loss)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        profile = ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
        totals: dict[str, float] = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLA"):  # XLA's worker threads; skips python and the wrappers
                    continue
                for event in line.events:
                    if not event.name.startswith(("ThunkExecutor", "end: ")):
                        totals[event.name] += event.duration_ns * 1e-9
    return totals, wall, cpu


def main(argv: list[str]) -> None:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    own.add_argument("--steps", type=int, default=20, help="traced calls of the step (default: %(default)s)")
    own.add_argument("--top", type=int, default=15, help="components listed (default: %(default)s)")
    args, rest = own.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as out_dir:
        config = parse_train_args([*rest, f"--out_dir={out_dir}"], prog="profile_step.py")
        with Run(config, log=lambda _: None) as run:
            names = op_names(run.compile().as_text())
            jax.block_until_ready(run.step())  # warm up
            totals, wall, cpu = trace_op_times(run, args.steps)
            config, steps = run.config, args.steps * run.steps_per_call  # each call runs steps_per_call steps
    by_pass, by_component = collections.Counter(), collections.Counter()
    for event, seconds in totals.items():
        pass_, component = classify(names.get(event, event))
        by_pass[pass_] += seconds / steps
        by_component[f"{pass_:>8}  {component}"] += seconds / steps
    op_total = sum(by_pass.values())
    m = config.model
    print(f"config: {' '.join(rest) or '(defaults)'}; B={config.batch_size} T={m.block_size} L={m.n_layer} "
          f"C={m.n_embd} dropout={m.dropout} dtype={m.dtype} attention={m.attention}")
    print(f"{jax.devices()[0].device_kind}, {jax.local_device_count()} device(s); {args.steps} traced calls of "
          f"{run.steps_per_call} step(s); the profiler slows small steps down")
    print(f"per step: wall {wall / steps * 1e3:.2f} ms, process CPU {cpu / steps * 1e3:.2f} ms, "
          f"XLA op time {op_total * 1e3:.2f} ms (all threads)")
    print("\nby pass:")
    for name, seconds in by_pass.most_common():
        print(f"  {name:<14} {seconds * 1e3:10.2f} ms  {100 * seconds / op_total:5.1f}%")
    print(f"\ntop {args.top} components:")
    for name, seconds in by_component.most_common(args.top):
        print(f"  {seconds * 1e3:10.2f} ms  {100 * seconds / op_total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
