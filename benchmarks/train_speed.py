"""Training speed of jaxgpt against PyTorch on this machine: the same model, the same batches, in turns.

    python benchmarks/train_speed.py [--quick] [--configs=small,lecture] [--rounds=N] [--one_at_a_time]

Implementations, each in its own worker process (so each has its own peak memory):
  jaxgpt         the compiled train step `python -m jaxgpt.train` runs (make_train_step): batch sampling,
                 forward, backward and AdamW update in one XLA call
  torch lecture  jaxgpt/torch_reference/lecture.py with the lecture's loop: get_batch (torch.randint + stack),
                 forward, zero_grad, backward, AdamW step
  torch nanoGPT  jaxgpt/torch_reference/sdpa.py (fused qkv + F.scaled_dot_product_attention), same loop
The parent process asks the workers for timed runs in turn (round robin) and reports the median of the
rounds, so slow phases of a shared machine hit every implementation alike. With --one_at_a_time each
implementation runs all its rounds with no other worker alive (see benchmarks/RESULTS.md for why both
modes are reported for `lecture`). It also measures the
machine's float32 matmul peak (jnp.dot and torch.mm of 2048 x 2048 matrices) to compare GFLOP/s against.
Memory: the worker's peak resident set size (ru_maxrss), and its growth over the RSS after imports,
which is what the model, optimizer, activations and compiled code took. XLA's own buffer plan for the
jaxgpt step (arguments + temporaries) is printed too.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("jaxgpt", "torch lecture", "torch nanoGPT")
MATMUL_N = 2048


# ------------------------------------------------------------------------------------------------ workers
def _rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _matmul_gflops(matmul, reps: int = 5) -> float:
    """Best float32 GFLOP/s of `matmul()`, a (MATMUL_N, MATMUL_N) @ (MATMUL_N, MATMUL_N) product."""
    matmul()
    seconds = []
    for _ in range(reps):
        tic = time.perf_counter()
        matmul()
        seconds.append(time.perf_counter() - tic)
    return 2 * MATMUL_N**3 / min(seconds) / 1e9


def _jax_matmul_gflops() -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((MATMUL_N, MATMUL_N), jnp.float32)
    square = jax.jit(lambda x: x @ x)
    return _matmul_gflops(lambda: square(a).block_until_ready())


def _torch_matmul_gflops() -> float:
    import torch

    a = torch.ones(MATMUL_N, MATMUL_N)
    return _matmul_gflops(lambda: torch.mm(a, a))


def _jax_runner(config_args: list[str], steps_per_call: int | None):
    import jax

    from jaxgpt.cli import parse_train_args
    from jaxgpt.run.training import Run

    baseline = _rss_mib()
    override = [f"--steps_per_call={steps_per_call}"] if steps_per_call else []  # else the config's own
    out_dir = tempfile.mkdtemp(prefix="jaxgpt-train-speed-")
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    config = parse_train_args([*config_args, *override, f"--out_dir={out_dir}", "--overwrite"], prog="jaxgpt")
    training = Run(config, log=lambda _: None)  # lives as long as the benchmark process
    tic = time.perf_counter()
    memory = training.compile().memory_analysis()
    compile_s = time.perf_counter() - tic
    xla_mib = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**20 if memory else None

    def run(calls: int) -> None:
        for _ in range(calls):
            loss = training.step()
        jax.block_until_ready(loss)

    info = {"compile_s": compile_s, "xla_buffers_mib": xla_mib, "dtype": training.config.model.dtype,
            "steps_per_call": training.steps_per_call}
    return run, baseline, info


def _torch_runner(impl: str, config_args: list[str], threads: int):
    import torch

    from jaxgpt.cli import parse_train_args
    from jaxgpt.data.text import load_dataset
    from jaxgpt.torch_reference.lecture import GPTLanguageModel
    from jaxgpt.torch_reference.sdpa import GPT

    torch.set_num_threads(threads)
    baseline = _rss_mib()
    config = parse_train_args(config_args, prog="torch")
    dataset = load_dataset(config.data_path, config.block_size)
    torch.manual_seed(config.seed)
    m, B, T = config.model, config.batch_size, config.block_size
    model_class = GPTLanguageModel if impl == "torch lecture" else GPT
    model = model_class(dataset.tokenizer.vocab_size, T, m.n_layer, m.n_head, m.n_embd, m.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(config.beta1, config.beta2),
                                  eps=config.eps, weight_decay=config.weight_decay)
    data = torch.from_numpy(dataset.train).long()

    def get_batch():  # the lecture's
        ix = torch.randint(len(data) - T, (B,))
        return torch.stack([data[i:i + T] for i in ix]), torch.stack([data[i + 1:i + T + 1] for i in ix])

    def run(calls: int) -> None:
        for _ in range(calls):
            xb, yb = get_batch()
            _, loss = model(xb, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run, baseline, {"threads": threads, "steps_per_call": 1}


def worker(conn, impl: str, config_args: list[str], torch_threads: int, steps_per_call: int | None) -> None:
    """Build `impl`, warm it up, answer ("run", calls) with (wall s, cpu s); at ("stop",) report peak RSS, then
    the matmul peak (measured last, so its buffers do not count in the peak RSS)."""
    if impl == "jaxgpt":
        run, baseline, info = _jax_runner(config_args, steps_per_call)
    else:
        run, baseline, info = _torch_runner(impl, config_args, torch_threads)
    tic = time.perf_counter()
    run(1)  # warm-up; also a first estimate of the step time
    conn.send({**info, "rss_baseline_mib": baseline, "first_call_s": time.perf_counter() - tic})
    while (message := conn.recv())[0] == "run":
        wall, cpu = time.perf_counter(), time.process_time()
        run(message[1])
        conn.send((time.perf_counter() - wall, time.process_time() - cpu))
    peak_rss = _peak_rss_mib()
    matmul_gflops = _jax_matmul_gflops() if impl == "jaxgpt" else _torch_matmul_gflops()
    conn.send({"peak_rss_mib": peak_rss, "matmul_gflops": matmul_gflops})


# ------------------------------------------------------------------------------------------------ parent
@dataclasses.dataclass
class Measurement:
    impl: str
    steps_per_call: int
    info: dict
    walls: list[float] = dataclasses.field(default_factory=list)  # seconds per step, one per round
    cpus: list[float] = dataclasses.field(default_factory=list)

    @property
    def steps_per_sec(self) -> float:
        return 1.0 / statistics.median(self.walls)


def machine_header(argv: list[str]) -> list[str]:
    import jax
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, {platform.platform()}",
        f"versions: python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}",
        f"command: python benchmarks/train_speed.py {' '.join(argv)}",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    ]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_worker(spawn, impl: str, k: int | None, config_args: list[str], args: argparse.Namespace, log,
                 name: str) -> tuple[Measurement, Any, Any]:
    """Spawn a worker for `impl` and wait until it has built and warmed up (alone: compile time is not shared)."""
    parent_end, child_end = spawn.Pipe()
    process = spawn.Process(target=worker, args=(child_end, impl, config_args, args.torch_threads, k))
    process.start()
    info = parent_end.recv()
    log(f"  {name}: {impl} ready (first call {info['first_call_s']:.1f} s)")
    return Measurement(impl, info["steps_per_call"], info), parent_end, process


def time_round(measurement: Measurement, conn, seconds: float) -> None:
    """One timed run of about `seconds`, appended to the measurement."""
    k = measurement.steps_per_call
    per_call = measurement.walls[-1] * k if measurement.walls else measurement.info["first_call_s"]
    calls = max(1, round(seconds / per_call))
    conn.send(("run", calls))
    wall, cpu = conn.recv()
    measurement.walls.append(wall / (calls * k))
    measurement.cpus.append(cpu / (calls * k))


def stop_worker(measurement: Measurement, conn, process) -> None:
    conn.send(("stop",))
    measurement.info.update(conn.recv())
    process.join()


def benchmark_config(name: str, args: argparse.Namespace, log) -> tuple[list[Measurement], dict]:
    """Time every implementation on config `name`: in turns (all workers alive), or one worker at a time."""
    config_args = [f"--config={name}", *args.override]
    spawn = multiprocessing.get_context("spawn")
    impls = [("jaxgpt", None)] + [("jaxgpt", k) for k in args.steps_per_call]
    impls += [(impl, None) for impl in IMPLEMENTATIONS[1:] if impl in args.impls]
    if args.one_at_a_time:
        measurements = []
        for impl, k in impls:
            measurement, conn, process = start_worker(spawn, impl, k, config_args, args, log, name)
            for _ in range(args.rounds):
                time_round(measurement, conn, args.seconds)
            stop_worker(measurement, conn, process)
            measurements.append(measurement)
            log(f"  {name}: {impl} done, load {load_average()}")
        return measurements, {"load": load_average()}
    workers = [start_worker(spawn, impl, k, config_args, args, log, name) for impl, k in impls]
    for round_ in range(args.rounds):
        for measurement, conn, _ in workers:
            time_round(measurement, conn, args.seconds)
        log(f"  {name}: round {round_ + 1}/{args.rounds} done, load {load_average()}")
    for worker_ in workers:
        stop_worker(*worker_)
    return [m for m, _, _ in workers], {"load": load_average()}


def report(name: str, measurements: list[Measurement], flops_per_step: float, tokens_per_step: int,
           peak_gflops: float) -> tuple[list[str], dict[str, float]]:
    jax_row = measurements[0]
    lines = [f"| {name} | implementation | steps/s | tokens/s | GFLOP/s | % of matmul peak | jaxgpt speedup "
             f"| CPU s/step | peak RSS MiB (growth) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in measurements:
        label = m.impl if m.impl != "jaxgpt" or m.steps_per_call == 1 else f"jaxgpt ({m.steps_per_call} steps/call)"
        spread = f" ({1 / max(m.walls):.3g}-{1 / min(m.walls):.3g})" if len(m.walls) > 1 else ""
        gflops = flops_per_step * m.steps_per_sec / 1e9
        growth = m.info["peak_rss_mib"] - m.info["rss_baseline_mib"]
        lines.append(f"| | {label} | {m.steps_per_sec:.3g}{spread} | {tokens_per_step * m.steps_per_sec:,.0f} "
                     f"| {gflops:.1f} | {100 * gflops / peak_gflops:.0f}% "
                     f"| {jax_row.steps_per_sec / m.steps_per_sec:.2f}x | {statistics.median(m.cpus):.3g} "
                     f"| {m.info['peak_rss_mib']:.0f} ({growth:+.0f}) |")
    ratios = {m.impl: jax_row.steps_per_sec / m.steps_per_sec for m in measurements if m.impl != "jaxgpt"}
    return lines, ratios


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 2 min on a quiet 2-core "
                                                             "machine) instead of the full run (about 6 min)")
    parser.add_argument("--configs", default="small,lecture", help="comma-separated config names")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS[1:]), help="torch implementations to run")
    parser.add_argument("--rounds", type=int, help="timed rounds per implementation (default: 3 quick, 5 full)")
    parser.add_argument("--seconds", type=float, help="target seconds per timed run (default: 2 quick, 4 full)")
    parser.add_argument("--steps_per_call", default="", help="extra jaxgpt rows with these steps_per_call "
                                                                  "(comma-separated; the first row uses the config's)")
    parser.add_argument("--one_at_a_time", action="store_true",
                        help="run each implementation's rounds alone, its worker the only one alive, instead of "
                             "in turns (on our VM a large step got slower while the other workers held memory)")
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    args, args.override = parser.parse_known_args(argv)  # the rest: --field=value for every config
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    args.steps_per_call = [int(k) for k in args.steps_per_call.split(",") if k]
    args.impls = args.impls.split(",")

    from jaxgpt.cli import parse_train_args
    from jaxgpt.core.model import build_model, count_params, init_params

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    header = machine_header(argv)
    print("\n".join(header))
    print(f"load average before: {load_average()}")
    summary = []
    for name in args.configs.split(","):
        import jax

        config = parse_train_args([f"--config={name}", *args.override], prog="x")
        model_config = dataclasses.replace(config.model, vocab_size=65)
        n_params = count_params(jax.eval_shape(lambda c=model_config: init_params(c, jax.random.key(0))))
        tokens_per_step = config.batch_size * config.block_size
        flops_per_step = build_model(model_config).flops_per_token(n_params) * tokens_per_step
        measurements, extra = benchmark_config(name, args, log)
        peak = max(m.info["matmul_gflops"] for m in measurements)
        lines, ratios = report(name, measurements, flops_per_step, tokens_per_step, peak)
        m = config.model
        print(f"\n{name}: B={config.batch_size} T={m.block_size} L={m.n_layer} H={m.n_head} C={m.n_embd} "
              f"dropout={m.dropout}, {n_params / 1e6:.3f}M params, {flops_per_step / 1e9:.2f} GFLOP/step "
              f"(6N + 12LCT per token); median of {args.rounds} rounds (range in brackets); load after: "
              f"{extra['load']}")
        jax_row = measurements[0]
        jax_info = jax_row.info
        print("matmul peak float32, GFLOP/s: " + ", ".join(
            f"{x.impl} {x.info['matmul_gflops']:.0f}" for x in measurements if x.impl != "jaxgpt" or x is jax_row))
        print(f"jaxgpt: compile {jax_info['compile_s']:.1f} s, dtype {jax_info['dtype']}, XLA buffers "
              f"(arguments + temporaries) {jax_info['xla_buffers_mib']:.0f} MiB; "
              f"torch threads {args.torch_threads}")
        print("\n".join(lines))
        if ratios:
            lecture = ratios.get("torch lecture")
            fastest = min(ratios.values())
            summary.append(f"{name}: jaxgpt is {lecture:.2f}x the lecture's PyTorch loop" if lecture else name)
            summary[-1] += f", {fastest:.2f}x the faster PyTorch variant"
    print("\nsummary: " + "; ".join(summary))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main(sys.argv[1:])
