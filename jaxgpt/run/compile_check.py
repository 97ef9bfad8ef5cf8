"""A run's programs compiled for an accelerator that is not here: memory per device, FLOPs and a time bound.

`check_train(config, target)` builds the programs `python -m jaxgpt.train` would run with `config` (the train step
with its steps per call and grad_accum, the evaluation, the sampler at the end, the inspect page's forward pass)
from the same code, on the target's devices (jaxgpt.system.targets), with abstract arguments: nothing is
initialized, moved or run, and no weights are read (`--init_from` contributes its config). `check_sample` and
`check_eval` do the same for `python -m jaxgpt.sample` and `python -m jaxgpt.eval`. Each program is compiled by
the target's own compiler (libtpu, XLA:GPU) and measured from the compiled program: `memory_analysis()` per
device; `cost_analysis()` FLOPs and bytes where the compiler gives them (TPU), jaxgpt's count (core/mfu.py) where
not (GPU).

The figures are compiled, not run: the step time is a lower bound (peak FLOP/s and memory bandwidth), and the
time at a stated MFU an estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.keys import INIT_STREAM, stream_key
from jaxgpt.core.losses import make_split_sums
from jaxgpt.core.mfu import device_peak_flops, flops_per_token
from jaxgpt.core.model import build_model, count_params, init_params
from jaxgpt.core.optim import make_optimizer
from jaxgpt.core.sampling import Sampling, cached_program_options, generate_cached
from jaxgpt.data.text import load_dataset
from jaxgpt.run.evaluate import check_block_size, whole_split_window_specs
from jaxgpt.run.inspection import lowered_read, run_page_tokens
from jaxgpt.run.step import TrainState, make_train_step, resolved_steps_per_call
from jaxgpt.run.training import make_batches
from jaxgpt.system import sharding
from jaxgpt.system.errors import JaxgptError
from jaxgpt.system.targets import Target, target_devices
from jaxgpt.weights import pretrained

ASSUMED_MFU = 0.4  # the stated MFU of the time estimate: what a well-tuned small GPT reaches on these chips
# Custom calls worth naming in the report: fused attention (cuDNN on GPU, Pallas/Mosaic kernels on TPU).
_KERNELS = re.compile(r"__cudnn\$fmha\w*|tpu_custom_call")


class ProgramTooBig(Exception):
    """The target's compiler refused a program: it needs more memory than a device has (TPU: RESOURCE_EXHAUSTED)."""


@contextlib.contextmanager
def _too_big_is_one_line(target: Target, fixes: tuple[str, ...]) -> Iterator[None]:
    """A program the compiler refuses as too big, said as `Report.fit_problem` says one that compiles but does not
    fit: one line with the flags that shrink it (JaxgptError, exit 1)."""
    try:
        yield
    except ProgramTooBig as err:
        raise JaxgptError(f"on {target.name} {err}; try {' or '.join(fixes) or 'a smaller model'}") from None


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program, per device: its memory (`memory_analysis()`), FLOPs and HBM bytes (the compiler's
    `cost_analysis()`, or None where it gives none; it counts the body of a loop once, so a train step of K steps
    per call, each of A micro-batches, reports one micro-batch's step), the fused kernels it calls (custom calls
    to cuDNN's attention or to Pallas kernels), its compile time."""

    name: str
    calls_per_step: float  # how many calls make one optimizer step (1 / steps per call for the train step)
    loop_trips: int  # the compiler counts a loop's body once: FLOPs x this is one step's (the micro-batches)
    arguments: int
    outputs: int
    aliased: int  # outputs written over donated arguments
    temporaries: int
    code: int
    flops: float | None
    bytes_accessed: float | None
    kernels: tuple[str, ...]
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        """What the program holds at once on a device: its arguments, the outputs not written in place of a
        donated argument, its temporaries and its code."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def measure(cls, name: str, lowered: jax.stages.Lowered, calls_per_step: float = 1.0,
                loop_trips: int = 1) -> Program:
        # A program for devices that are not here cannot be read back from JAX's persistent compilation cache
        # (each read warns and compiles again): keep none there.
        keep_after = jax.config.jax_persistent_cache_min_compile_time_secs
        jax.config.update("jax_persistent_cache_min_compile_time_secs", math.inf)
        started = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as err:
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            said = str(err).split("RESOURCE_EXHAUSTED: ", 1)[-1].splitlines()[0].rstrip(".")
            raise ProgramTooBig(f"the {name} does not fit a device (the compiler: {said})") from None
        finally:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", keep_after)
        seconds = time.perf_counter() - started
        memory = compiled.memory_analysis()
        costs = compiled.cost_analysis()
        costs = (costs[0] if isinstance(costs, list) else costs) or {}
        # the custom calls are there before compiling; the compiled HLO cannot always be printed by this jaxlib
        # (libtpu's v6e programs hold instructions its parser refuses)
        kernels = tuple(sorted(set(_KERNELS.findall(lowered.as_text()))))
        return cls(name, calls_per_step, loop_trips, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                   memory.alias_size_in_bytes, memory.temp_size_in_bytes, memory.generated_code_size_in_bytes,
                   costs.get("flops"), costs.get("bytes accessed"), kernels, seconds)


@dataclasses.dataclass(frozen=True)
class Report:
    """A command's programs compiled for `target`, and what they predict for `steps` optimizer steps."""

    target: Target
    command: str  # what was compiled, e.g. "train --config=lecture"
    programs: list[Program]
    params_bytes: int  # per device
    optimizer_bytes: int  # per device (0 when not training)
    model_flops_per_step: float | None  # jaxgpt's count for one optimizer step, all devices; None: not training
    steps: int  # max_iters (0 when not training)
    peak_flops: float  # per device, for the matmuls' dtype (jaxgpt.core.mfu, by the devices' kind)
    fixes: tuple[str, ...] = ()  # flags that make the programs smaller, for `fit_problem`

    @property
    def usable_bytes(self) -> int:
        return int(self.target.chip.memory * self.target.chip.usable)

    def too_big(self) -> list[Program]:
        return [program for program in self.programs if program.peak_bytes > self.usable_bytes]

    def fit_problem(self) -> str | None:
        """One line saying which program does not fit a device and what to change; None when all fit."""
        too_big = self.too_big()
        if not too_big:
            return None
        worst = max(too_big, key=lambda program: program.peak_bytes)
        others = f" (and {', '.join(p.name for p in too_big if p is not worst)})" if len(too_big) > 1 else ""
        return (f"on {self.target.name} the {worst.name}{others} needs {format_bytes(worst.peak_bytes)} per "
                f"device, more than the {format_bytes(self.usable_bytes)} a {self.target.chip.name} gives it; try "
                f"{' or '.join(self.fixes) or 'a smaller model'}")

    @property
    def train_step(self) -> Program | None:
        return next((p for p in self.programs if p.name.startswith("train step")), None)

    def flops_per_step_per_device(self) -> float | None:
        """FLOPs of one optimizer step on one device: the compiled program's, else jaxgpt's count / devices."""
        step = self.train_step
        if step is None:
            return None
        if self.flops_are_compiled():  # a loop's body is counted once: one step of the call's K
            return step.flops * step.loop_trips
        return self.model_flops_per_step / self.target.devices

    def flops_are_compiled(self) -> bool:
        """Whether the train step's FLOPs are the compiler's: not where it gives none (GPU) or leaves a kernel's
        out (a custom call: cuDNN's or a Pallas kernel's)."""
        step = self.train_step
        return step is not None and step.flops is not None and not step.kernels

    def step_seconds_bound(self) -> float | None:
        """A lower bound on one optimizer step: its FLOPs at the chip's peak, or its HBM traffic at the chip's
        bandwidth (the compiler's bytes accessed; where it gives none, reading every argument and writing every
        output once), whichever is longer."""
        step = self.train_step
        if step is None:
            return None
        if step.bytes_accessed is not None:
            traffic = step.bytes_accessed * step.loop_trips
        else:
            traffic = (step.arguments + step.outputs) * step.calls_per_step
        return max(self.flops_per_step_per_device() / self.peak_flops, traffic / self.target.chip.bandwidth)

    def seconds_at_mfu(self, mfu: float = ASSUMED_MFU) -> float | None:
        """max_iters steps at `mfu` of the target's peak, counting jaxgpt's model FLOPs (as MFU does), or at the
        lower bound where that is longer: a step bound by memory traffic is never faster than its bound."""
        bound = self.step_seconds_bound()
        if self.model_flops_per_step is None or bound is None:
            return None
        at_mfu = self.model_flops_per_step / (mfu * self.peak_flops * self.target.devices)
        return self.steps * max(at_mfu, bound)

    def format(self) -> str:
        """The report as a table: one row per program, then the state and the time lines."""
        chip, usable = self.target.chip, self.usable_bytes
        share = "" if chip.usable == 1 else f", {chip.usable:.0%} usable by JAX"
        lines = [f"{self.command}: compiled for {self.target.name} ({self.target.devices} x {chip.name}, "
                 f"{format_bytes(chip.memory)} each{share}); compiled, not run",
                 f"  per device: params {format_bytes(self.params_bytes)}"
                 + (f", optimizer state {format_bytes(self.optimizer_bytes)}" if self.optimizer_bytes else "")]
        header = f"  {'program':<24}{'arguments':>11}{'outputs':>11}{'temporaries':>13}{'peak':>11}{'of HBM':>8}" \
                 f"{'GFLOP/call':>12}{'compile':>9}  kernels"
        lines.append(header)
        for p in self.programs:
            gflops = f"{p.flops / 1e9:.3g}" if p.flops is not None else "-"
            sizes = (f"{format_bytes(p.arguments):>11}{format_bytes(p.outputs - p.aliased):>11}"
                     f"{format_bytes(p.temporaries):>13}{format_bytes(p.peak_bytes):>11}")
            lines.append(f"  {p.name:<24}{sizes}{p.peak_bytes / usable:>8.0%}{gflops:>12}{p.compile_seconds:>8.0f}s  "
                         f"{', '.join(p.kernels) or '-'}")
        bound = self.step_seconds_bound()
        if bound is not None:
            source = "compiled program" if self.flops_are_compiled() else "jaxgpt's count"
            lines.append(f"  FLOPs per step per device: {self.flops_per_step_per_device():.3e} ({source}); "
                         f"jaxgpt's count: {self.model_flops_per_step / self.target.devices:.3e}")
            lines.append(f"  step time >= {format_duration(bound)} (peak FLOP/s and HBM bandwidth); "
                         f"{self.steps:,} steps >= {format_duration(bound * self.steps)}, about "
                         f"{format_duration(self.seconds_at_mfu())} at {ASSUMED_MFU:.0%} MFU or the bound")
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """Bytes in GiB, MiB or KiB."""
    if n >= 2**28:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_duration(seconds: float) -> str:
    """Seconds as ms, s, min or h, three digits."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def _spec(leaf: Any, where: NamedSharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where)


def _specs(tree: Any, where: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves (arrays or abstract values), placed as `where` (a sharding, or a tree
    of them mirroring `tree`)."""
    if isinstance(where, jax.sharding.Sharding):
        return jax.tree_util.tree_map(lambda leaf: _spec(leaf, where), tree)
    return jax.tree_util.tree_map(_spec, tree, where)


def _per_device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes of `tree` that one device holds under `shardings` (a tree of them)."""
    sizes = jax.tree_util.tree_map(lambda leaf, where: math.prod(where.shard_shape(leaf.shape)) * leaf.dtype.itemsize,
                                   tree, shardings)
    return int(sum(jax.tree_util.tree_leaves(sizes)))


def _resolved_train_config(config: TrainConfig, target: Target) -> tuple[TrainConfig, Any]:
    """The config as `resolve_start` settles it, but from the weights' config alone (and their vocabulary, which the
    run requires the data's tokenizer to have), with the "auto" choices made for the target's platform; and the
    dataset (its form and sizes decide the programs')."""
    dataset = load_dataset(config.data_path, config.block_size)
    vocab_size = dataset.tokenizer.vocab_size
    if config.init_from and not config.resume:  # the run checks that the data has the weights' tokenizer
        model = pretrained.run_model(pretrained.model_config(config.init_from), config.model)
        config, vocab_size = dataclasses.replace(config, model=model), model.vocab_size
    return config.for_vocab(vocab_size, backend=target.platform), dataset


def _sampler(model: GPTConfig, params: Any, where: NamedSharding, prompt_len: int, rows: int, max_new_tokens: int,
             cache: str = "recompute") -> jax.stages.Lowered:
    """`generate`'s program for `rows` prompts of `prompt_len` tokens, lowered with `params` placed as they are."""
    prompt = jax.ShapeDtypeStruct((rows, prompt_len), jnp.int32, sharding=where)
    key = _spec(jax.eval_shape(lambda: jax.random.key(0)), where)
    sampling = _specs(Sampling.of(model.vocab_size, 1.0, None, None), where)
    return generate_cached.lower(model, params, prompt, key, sampling,
                                 **cached_program_options(model, max_new_tokens, cache))


def check_train(config: TrainConfig, target: Target, log: Callable[[str], None] = print) -> Report:
    """Compile for `target` the programs a training run of `config` executes (see the module docstring)."""
    devices = target_devices(target)
    config, dataset = _resolved_train_config(config, target)
    mesh = sharding.make_mesh(config.fsdp, devices)
    sharding.check_batch_size(config.batch_size, mesh)
    tx, model = make_optimizer(config), build_model(config.model)
    abstract = jax.eval_shape(lambda: TrainState.fresh(init_params(config.model, stream_key(config.seed,
                                                                                             INIT_STREAM)), tx))
    placement = sharding.Placement.for_state(mesh, abstract)
    state = _specs(abstract, placement.state)
    batches = make_batches(config, placement, dataset)
    n_params = count_params(abstract.params)
    tokens_per_step = config.grad_accum * config.batch_size * config.block_size
    model_flops = float(flops_per_token(config.model, n_params)) * tokens_per_step
    steps_per_call = resolved_steps_per_call(config, model_flops)
    log(f"compiling for {target.name}: {n_params / 1e6:.2f} M parameters, {steps_per_call} step(s) per call")

    programs, fixes = [], _train_fixes(config, mesh)
    train_step = make_train_step(config, model, tx, placement, batches, steps_per_call)
    replicated = placement.replicated
    token_bytes = _spec(np.asarray(dataset.tokenizer.token_bytes()), replicated)
    split_sums = make_split_sums(model, placement)
    if config.eval_mode == "full":
        windows, counted = whole_split_window_specs(len(dataset.val), config.batch_size, config.block_size,
                                                   replicated)
    else:
        windows = batches.eval_windows_spec("val")
        counted = jax.ShapeDtypeStruct((*windows.shape[:2], windows.shape[2] - 1), jnp.bool_, sharding=replicated)
    with _too_big_is_one_line(target, fixes):
        programs.append(Program.measure(f"train step (x{steps_per_call})",
                                        train_step.lower(state, batches.step_input_spec(steps_per_call)),
                                        1 / steps_per_call, config.grad_accum))
        programs.append(Program.measure("evaluation", split_sums.lower(state.params, windows, counted, token_bytes)))
        if config.sample_chars:
            programs.append(Program.measure("sampler", _sampler(config.model, state.params, replicated, 1, 1,
                                                                config.sample_chars)))
        one_host = len({device.process_index for device in devices}) == 1  # a multi-host run writes no page
        if config.inspect and config.model.model_type == "gpt" and one_host:
            T = config.model.block_size
            n_windows = -(-run_page_tokens(len(dataset.val), T) // T)
            programs.append(Program.measure("inspect page", lowered_read(config.model, state.params, n_windows,
                                                                         replicated)))
    batches.close()
    params_bytes = _per_device_bytes(abstract.params, placement.state.params)
    optimizer_bytes = _per_device_bytes(abstract.opt_state, placement.state.opt_state)
    return Report(target, "train", programs, params_bytes, optimizer_bytes, model_flops, config.max_iters,
                  _peak_flops(devices[0], config.model.dtype), fixes)


def _train_fixes(config: TrainConfig, mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    """Flags that shrink a train step's memory per device: shard the state over more devices, the same tokens
    per step in more, smaller micro-batches, bfloat16 matmuls."""
    fixes = []
    if config.fsdp < mesh.size:
        fixes.append(f"--fsdp={mesh.size} (params and optimizer state split over the devices)")
    half = config.batch_size // 2
    if config.batch_size % 2 == 0 and half % sharding.batch_shards(mesh) == 0:
        fixes.append(f"--batch_size={half} --grad_accum={config.grad_accum * 2} (the same tokens per step, half "
                     "the activations)")
    if config.model.dtype == "float32":
        fixes.append("--dtype=bfloat16")
    return tuple(fixes)


def check_sample(model: GPTConfig, target: Target, *, dtype: str, prompt_len: int, num_samples: int,
                 max_new_tokens: int, cache: str) -> Report:
    """Compile for `target` the program `python -m jaxgpt.sample` runs: `num_samples` rows of `prompt_len` prompt
    tokens continued by `max_new_tokens`, the weights in `dtype`, on one device."""
    devices = target_devices(target)
    model = pretrained.for_inference(model, dtype).resolved(target.platform)
    where = NamedSharding(jax.sharding.Mesh(np.array(devices[:1]), ("one",)), PartitionSpec())
    abstract = jax.eval_shape(lambda: pretrained.cast_params(init_params(model, jax.random.key(0)), dtype))
    params = _specs(abstract, where)
    fixes = ["--dtype=bfloat16"] if dtype == "float32" else []
    if num_samples > 1:
        fixes.append(f"--num_samples={num_samples // 2}")
    with _too_big_is_one_line(target, tuple(fixes)):
        program = Program.measure("sampler", _sampler(model, params, where, prompt_len, num_samples, max_new_tokens,
                                                      cache))
    params_bytes = _per_device_bytes(abstract, jax.tree_util.tree_map(lambda _: where, abstract))
    one = dataclasses.replace(target, devices=1)
    return Report(one, "sample", [program], params_bytes, 0, None, 0, _peak_flops(devices[0], model.dtype),
                  tuple(fixes))


def check_eval(source: str, target: Target, *, data_path: str | None, split: str, batch_size: int,
               block_size: int | None, dtype: str) -> Report:
    """Compile for `target` the program `python -m jaxgpt.eval SOURCE` runs over `split` of `data_path`: the weights
    (their config alone, `pretrained.model_config`) in `dtype`, replicated; each call scores up to
    FULL_EVAL_BATCHES batches of `batch_size` windows, the batches split over the devices. The data gives the
    split's length; its tokenizer is not checked against the weights' (a hub model's is a download): the
    command does that when it runs."""
    devices = target_devices(target)
    model = pretrained.for_inference(pretrained.model_config(source), dtype).resolved(target.platform)
    block_size = model.block_size if block_size is None else block_size
    check_block_size(block_size, model)
    dataset = load_dataset(data_path, block_size)
    tokens = dataset.train if split == "train" else dataset.val
    mesh = sharding.make_mesh(devices=devices)
    sharding.check_batch_size(batch_size, mesh)
    abstract = jax.eval_shape(lambda: pretrained.cast_params(init_params(model, jax.random.key(0)), dtype))
    placement = sharding.Placement.for_state(mesh, abstract)
    windows, counted = whole_split_window_specs(len(tokens), batch_size, block_size, placement.replicated)
    token_bytes = jax.ShapeDtypeStruct((model.vocab_size,), np.asarray(dataset.tokenizer.token_bytes()).dtype,
                                       sharding=placement.replicated)
    fixes = ["--dtype=bfloat16"] if dtype == "float32" else []
    if batch_size % 2 == 0 and (batch_size // 2) % sharding.batch_shards(mesh) == 0:
        fixes.append(f"--batch_size={batch_size // 2}")
    with _too_big_is_one_line(target, tuple(fixes)):
        program = Program.measure("evaluation", make_split_sums(build_model(model), placement).lower(
            _specs(abstract, placement.state), windows, counted, token_bytes))
    return Report(target, "eval", [program], _per_device_bytes(abstract, placement.state), 0, None, 0,
                  _peak_flops(devices[0], model.dtype), tuple(fixes))


def _peak_flops(device: jax.Device, dtype: str) -> float:
    peak = device_peak_flops(device, dtype)
    if peak is None:  # every target's kind is in the table (tests/test_targets.py)
        raise ValueError(f"no peak FLOP/s known for {device.device_kind}")
    return peak

