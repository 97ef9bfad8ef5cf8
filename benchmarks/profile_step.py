"""Where the time of one jaxgpt training step goes on this machine, by pass and by model component.

    python benchmarks/profile_step.py --config=small [--steps=50] [--field=value ...]

Traces `--steps` calls of the compiled train step (the one `jaxgpt.train` uses) with `jax.profiler`,
maps every executed XLA op back to the JAX operation it came from (HLO `op_name` metadata) and sums the
op time over all threads: forward, backward, optimizer, and batch/PRNG; then the heaviest components
(`blocks_*/sa/query/dot_general`, ...). Times are per step; "op time" counts busy time on every thread,
so with 2 threads it can exceed the wall time.

Then the matrix products against bare ones: every executed op that holds a `dot` (a product alone, or one XLA
fused with elementwise work) is timed in the step, and the same products (operand shapes, dtypes and dimension
numbers) are timed bare, each its own jitted program, in this process. The ratio is the fraction of a bare
product's rate the step's products reach; the untraced step's FLOP rate is given against the bare products' rate.
A bare call includes its dispatch (tens of microseconds): at tiny shapes it dominates and the ratio exceeds 100%.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jaxgpt.system.allocator import keep_freed_memory
from jaxgpt.system.xla_flags import set_cpu_flags

keep_freed_memory()  # as the command lines do, before JAX starts its threads
set_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from jaxgpt.cli import parse_train_args  # noqa: E402
from jaxgpt.run.training import Run  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", re.MULTILINE)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(")
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\w+)\(([^)]*)\)(.*)$")
_DOT_DIMS = ("lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims", "rhs_batch_dims")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op_name it was lowered from."""
    return {name: op for name, op in _INSTRUCTION.findall(hlo_text)}


def products(hlo_text: str) -> dict[str, list[tuple]]:
    """Executed HLO op name -> the matrix products it runs, each (lhs shape, rhs shape, dtype, dimension
    numbers): a top-level `dot`, or a fusion whose computation holds dots (with elementwise work around them)."""
    shapes, dots, calls, computation = {}, collections.defaultdict(list), {}, ""
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            computation = header.group(1)
        elif definition := _DEFINITION.match(line):
            name, dtype, dims, op, operands, rest = definition.groups()
            shapes[name] = tuple(int(d) for d in dims.split(",") if d)
            if op == "dot":
                lhs, rhs = (o.strip().lstrip("%") for o in operands.split(",")[:2])
                numbers = [tuple(int(d) for d in re.search(rf"{key}={{([\d,]*)}}", rest).group(1).split(",") if d)
                           if key in rest else () for key in _DOT_DIMS]
                dots[computation].append((name, lhs, rhs, dtype, ((numbers[0], numbers[1]), (numbers[2], numbers[3]))))
            elif op == "fusion" and (called := re.search(r"calls=%?([\w.\-]+)", rest)):
                calls[name] = called.group(1)
    executed = {name: dots[computation] for name, computation in calls.items() if dots.get(computation)}
    fused = set(calls.values())
    executed.update({entry[0]: [entry] for computation, entries in dots.items() if computation not in fused
                     for entry in entries})  # a dot outside any fusion runs under its own name
    return {name: [(shapes[lhs], shapes[rhs], dtype, numbers) for _, lhs, rhs, dtype, numbers in entries]
            for name, entries in executed.items()}


def time_bare_product(lhs: tuple, rhs: tuple, dtype: str, numbers: tuple, repeats: int = 10) -> float:
    """Median wall seconds of one product alone, jitted, on random operands of these shapes."""
    dtype = {"f32": np.float32, "bf16": jax.numpy.bfloat16, "f64": np.float64}[dtype]
    rng = np.random.default_rng(0)
    a, b = (jax.numpy.asarray(rng.standard_normal(shape), dtype=dtype) for shape in (lhs, rhs))
    product = jax.jit(functools.partial(jax.lax.dot_general, dimension_numbers=numbers))
    jax.block_until_ready(product(a, b))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(product(a, b))
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def product_flops(lhs: tuple, rhs: tuple, numbers: tuple) -> int:
    """2 x (output elements) x (contracted length)."""
    (lhs_contract, rhs_contract), (lhs_batch, _) = numbers
    contracted = int(np.prod([lhs[d] for d in lhs_contract]))
    free_lhs = int(np.prod([n for d, n in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch)]))
    free_rhs = int(np.prod([n for d, n in enumerate(rhs) if d not in (*rhs_contract, *numbers[1][1])]))
    return 2 * int(np.prod([lhs[d] for d in lhs_batch])) * free_lhs * free_rhs * contracted


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
            hlo = run.compile().as_text()
            names, step_products = op_names(hlo), products(hlo)
            jax.block_until_ready(run.step())  # warm up
            tic = time.perf_counter()
            for _ in range(args.steps):
                loss = run.step()
            jax.block_until_ready(loss)
            untraced = (time.perf_counter() - tic) / (args.steps * run.steps_per_call)
            step_flops = run.trainer.flops_per_step()
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
    report_products(step_products, totals, names, steps, untraced, step_flops, args.top)


def report_products(step_products: dict[str, list[tuple]], totals: dict[str, float], names: dict[str, str],
                    steps: int, untraced_s: float, step_flops: float, top: int) -> None:
    """The step's matrix products (as executed, fusions included) against the same products run bare."""
    bare = {spec: time_bare_product(*spec) for spec in {p for ps in step_products.values() for p in ps}}
    rows = collections.defaultdict(lambda: [0.0, 0.0, 0])  # component -> [step s, bare s, FLOPs] per step
    for event, specs in step_products.items():
        if event not in totals:
            continue
        row = rows[" ".join(classify(names.get(event, event)))]
        row[0] += totals[event] / steps
        row[1] += sum(bare[spec] for spec in specs)
        row[2] += sum(product_flops(spec[0], spec[1], spec[3]) for spec in specs)
    in_step, alone, flops = (sum(row[i] for row in rows.values()) for i in range(3))
    print(f"\nmatrix products: {in_step * 1e3:.2f} ms per step in the step (op time, fusions included), "
          f"{alone * 1e3:.2f} ms bare at the same shapes: {100 * alone / in_step:.0f}% of the bare rate")
    print(f"untraced step: {untraced_s * 1e3:.2f} ms, {step_flops / untraced_s / 1e9:.1f} GFLOP/s (6N + 12LCT "
          f"per token) = {100 * step_flops / untraced_s / (flops / alone):.0f}% of the bare products' "
          f"{flops / alone / 1e9:.1f} GFLOP/s")
    print(f"\n{'step ms':>10} {'bare ms':>9} {'of bare':>8}  products (top {top} by time in the step)")
    for name, (step_s, bare_s, _) in sorted(rows.items(), key=lambda item: -item[1][0])[:top]:
        print(f"{step_s * 1e3:10.2f} {bare_s * 1e3:9.2f} {100 * bare_s / step_s:7.0f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
