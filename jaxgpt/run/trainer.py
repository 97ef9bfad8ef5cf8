"""The trainer: the train state, its compiled step, loss estimates and the throughput clock. No files: the run
(jaxgpt.run.training) owns the run directory, the checkpoints and the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import eval_keys
from jaxgpt.core.losses import loss_and_bpb, make_split_sums
from jaxgpt.core.mfu import device_peak_flops, mfu
from jaxgpt.core.model import LanguageModel, count_params
from jaxgpt.core.optim import learning_rate_schedule
from jaxgpt.data.batches import Batches
from jaxgpt.run.evaluate import whole_split_loss, whole_split_window_specs
from jaxgpt.run.step import TrainState, make_train_step, resolved_steps_per_call
from jaxgpt.system.sharding import Placement


class Trainer:
    """Steps `state` with `model` and `tx` on `batches`' windows; estimates losses; keeps the clock.

    The step is compiled at the first `step()` for the steps per call that keep every evaluation and checkpoint
    from the current step on a call boundary (`resolved_steps_per_call`); `restart_at` after a restore does so
    again."""

    def __init__(self, config: TrainConfig, model: LanguageModel, tx: optax.GradientTransformation,
                 placement: Placement, batches: Batches, state: TrainState, token_bytes: np.ndarray):
        self.config, self.model, self.tx, self.placement, self.batches = config, model, tx, placement, batches
        self.state = state
        self.n_params = count_params(state.params)
        self.token_bytes = placement.replicate(token_bytes)  # (V,)
        self._split_sums = make_split_sums(model, placement)
        self._learning_rate = jax.jit(learning_rate_schedule(config))  # one program, not a compile per eager op
        self._compiled_step: jax.stages.Compiled | None = None
        self._evaluation_compile: threading.Thread | None = None
        self.steps_per_call = resolved_steps_per_call(config, self.flops_per_step())
        self._steps_done = 0  # the host's copy of state.step, so that a step does not wait to read the device's
        self.reset_clock()

    @property
    def step_count(self) -> int:
        """Optimizer steps done (reads the device's counter)."""
        return int(self.state.step)

    def restart_at(self, step: int, params, opt_state) -> None:
        """Continue from `step` with these params and optimizer state (a restored checkpoint); the step is compiled
        again for the steps per call from there."""
        step_array = jax.device_put(jnp.int32(step), self.state.step.sharding)
        self.state = self.state.replace(step=step_array, params=params, opt_state=opt_state)
        self._compiled_step, self._steps_done = None, step

    def compile(self) -> jax.stages.Compiled:
        """The train step compiled for the steps per call from the current step (once; `step()` calls it)."""
        if self._compiled_step is None:
            self.steps_per_call = resolved_steps_per_call(self.config, self.flops_per_step(), self.step_count)
            self.batches.prefetch(self._steps_done, self.steps_per_call)  # gathered while the step compiles
            train_step = make_train_step(self.config, self.model, self.tx, self.placement, self.batches,
                                         self.steps_per_call)
            spec = self.batches.step_input_spec(self.steps_per_call)
            self._compiled_step = train_step.lower(self.state, spec).compile()
            self.reset_clock()  # throughput counts from here, without the compilation
        return self._compiled_step

    def step(self) -> jax.Array:
        """`steps_per_call` optimizer steps in one compiled call; returns the last one's loss (still on device)."""
        train_step = self.compile()
        self.state, loss = train_step(self.state, self.batches.step_input(self._steps_done, self.steps_per_call))
        self._steps_done += self.steps_per_call
        return loss

    def compile_evaluation_ahead(self, n_val_tokens: int) -> None:
        """Start compiling the programs `measure` runs (its windows and loss sums), in a thread, while the steps run;
        once. A small model's steps leave part of a 2-core CPU idle, which the compile fills (the speedrun's
        evaluation: ~1.7 s of compiling); `measure` waits for the thread. `n_val_tokens`: the val split's length."""
        if self._evaluation_compile is None:
            programs = self._evaluation_programs(n_val_tokens)
            self._evaluation_compile = threading.Thread(target=_compile_quietly, args=(programs,), daemon=True,
                                                        name="jaxgpt-compile-evaluation")
            self._evaluation_compile.start()

    def _evaluation_programs(self, n_val_tokens: int) -> list[Callable[[], object]]:
        """Calls that compile, without running, each program of `measure` for the arrays it will be given."""
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                              self.state.params)
        windows = self.batches.eval_windows_spec("train")  # a val estimate's have the same shape
        counted = jax.ShapeDtypeStruct((*windows.shape[:2], windows.shape[2] - 1), np.bool_)  # as sampled_loss's
        programs: list[Callable[[], object]] = [
            lambda: self.batches.compile_eval_windows("train"),
            lambda: self._split_sums.lower(params, windows, counted, self.token_bytes).compile(),
            lambda: self._learning_rate.lower(self.config.max_iters).compile(),  # a step, as measure passes one
        ]
        if self.config.eval_mode == "full":
            whole = whole_split_window_specs(n_val_tokens, self.config.batch_size, self.config.block_size,
                                             self.placement.replicated)
            programs.append(lambda: self._split_sums.lower(params, *whole, self.token_bytes).compile())
        else:
            programs.append(lambda: self.batches.compile_eval_windows("val"))
        return programs

    def _wait_for_evaluation_compile(self) -> None:
        if self._evaluation_compile is not None:
            self._evaluation_compile.join()

    def reset_clock(self) -> None:
        """Count throughput, data wait and clipped steps from here (reads the device's counters)."""
        self._clock = (time.perf_counter(), int(self.state.step))
        self._clipped_before = int(self.state.health.clipped_steps)
        self.batches.reset_wait()

    def data_wait(self) -> float | None:
        """The fraction of the time since the clock was last reset that the steps waited for host-gathered windows
        (None where the windows are drawn on the device, which never waits)."""
        waited = self.batches.waited()
        return None if waited is None else waited / max(time.perf_counter() - self._clock[0], 1e-9)

    def tokens_per_sec(self) -> float | None:
        """Training throughput since the clock was last reset (at the first step and after each evaluation)."""
        seconds, steps = time.perf_counter() - self._clock[0], self.step_count - self._clock[1]
        return self.tokens_per_step * steps / seconds if steps else None

    @property
    def tokens_per_step(self) -> int:
        return self.config.grad_accum * self.config.batch_size * self.config.block_size

    def flops_per_step(self) -> float:
        """Training FLOPs of one optimizer step (nanoGPT's estimate: 6N + 12LCT per token)."""
        return self.model.flops_per_token(self.n_params) * self.tokens_per_step

    def _flops(self) -> tuple[float, float | None]:
        """(training FLOPs per token, peak FLOP/s of all devices: --peak_flops or the known-devices table)."""
        peak = self.config.peak_flops
        if peak is None:
            per_device = device_peak_flops(jax.devices()[0], self.config.model.dtype)
            peak = per_device * jax.device_count() if per_device else None
        return self.model.flops_per_token(self.n_params), peak

    def sampled_loss(self, split: str, key: jax.Array) -> tuple[float, float]:
        """(mean loss, bits per byte) over `eval_iters` random batches of `split` ("train", "val") drawn with `key`."""
        windows = self.batches.eval_windows(split, key)  # (eval_iters, B, T + 1)
        counted = np.ones((*windows.shape[:2], windows.shape[2] - 1), bool)  # on the host: no program to compile
        return loss_and_bpb(self._split_sums(self.state.params, windows, counted, self.token_bytes))

    def full_loss(self, tokens: np.ndarray) -> tuple[float, float]:
        """(mean loss, bits per byte) over the whole split `tokens` (N,) in consecutive windows (`whole_split_loss`).
        Deterministic: no key."""
        return whole_split_loss(self._split_sums, self.state.params, tokens, self.config.batch_size,
                                self.config.block_size, self.token_bytes, self.placement.replicate)

    def measure(self, val_tokens: np.ndarray) -> dict[str, float | None]:
        """The record of an evaluation at the current step: train and val loss (`eval_iters` random batches each,
        or with `eval_mode="full"` the val loss over the whole val split `val_tokens`), the val loss in bits per
        UTF-8 byte of text (`val_bpb`, comparable across tokenizers), throughput, data wait, MFU, learning rate."""
        step, tokens_per_sec, data_wait = self.step_count, self.tokens_per_sec(), self.data_wait()
        self._wait_for_evaluation_compile()
        train_key, val_key = eval_keys(self.config.seed, step)
        train_loss, _ = self.sampled_loss("train", train_key)
        val_loss, val_bpb = (self.full_loss(val_tokens) if self.config.eval_mode == "full"
                             else self.sampled_loss("val", val_key))
        return {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_bpb": val_bpb,
            "tokens_per_sec": tokens_per_sec,
            "data_wait": data_wait,
            "mfu": mfu(tokens_per_sec, *self._flops()) if tokens_per_sec else None,
            "learning_rate": float(self._learning_rate(step)),
            **self.health(),
        }

    def health(self) -> dict[str, float | None]:
        """The training-health part of an evaluation's record (with `health_metrics`, after a step): the last
        step's gradient norm before clipping, the fraction of steps since the clock was reset whose gradient
        clipping cut (with grad_clip > 0), and `update_ratio/GROUP`, each parameter group's RMS(update) /
        RMS(params) in the last step; nothing when no step ran since the reset."""
        steps = self.step_count - self._clock[1]
        if not self.config.health_metrics or steps == 0:  # e.g. at step 0
            return {}
        health = jax.device_get(self.state.health)
        clipped = (int(health.clipped_steps) - self._clipped_before) / steps
        return {"grad_norm": float(health.grad_norm),
                "clipped_fraction": clipped if self.config.grad_clip > 0 else None,
                **{f"update_ratio/{group}": float(ratio) for group, ratio in health.update_ratio.items()}}


def _compile_quietly(programs: list[Callable[[], object]]) -> None:
    """Run each compiling call; a failure is left to the real call, which compiles the same program and reports."""
    for compile_program in programs:
        try:
            compile_program()
        except Exception:  # noqa: BLE001, S112 - see the docstring
            continue
