"""Configuration: the model's `GPTConfig` and the run's `TrainConfig`, their rules, and named configs.

Each field is declared once, with its default, a one-line description (the `--help` text) and, where it
needs one, a rule (`positive`, `non_negative`, `unit_interval`, ...). Types are checked from the annotations,
`Literal` choices included, so a config file with `batch_size='8'` is refused like the flag `--batch_size=x`.

A config file defines a module-level `config = TrainConfig(...)`. The files in the repository's `configs/`
folder ship inside the package as `jaxgpt.configs`, so names resolve from any install.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import importlib.util
import json
import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax

from jaxgpt.system.errors import UsageError

ModelType = Literal["gpt", "bigram"]
Activation = Literal["relu", "gelu", "gelu_tanh", "relu2"]
Position = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Dtype = Literal["auto", "float32", "bfloat16"]
Attention = Literal["xla", "dot_product", "cudnn", "splash"]
FUSED_ATTENTION = ("cudnn", "splash")  # kernels that never store the (T, T) weights: the accelerators' own
DenseKernel = Literal["auto", "xla", "cpu"]
LRSchedule = Literal["constant", "cosine"]
Warmup = Literal["from_zero", "nanogpt"]
Optimizer = Literal["adamw", "muon"]
EvalMode = Literal["sampled", "full"]

Rule = Callable[[float], str | None]  # a value -> what is wrong with it, or None


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def unit_interval(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def seed_range(value: int) -> str | None:
    # JAX keys hold 32 bits of a seed (without jax_enable_x64): 2**32 + 5 would silently be seed 5.
    return None if 0 <= value < 2**32 else "must be in [0, 2**32)"


TRACKERS = ("tensorboard", "wandb")


def tracker_names(value: str) -> str | None:
    names = value.split(",") if value else []
    if any(name not in TRACKERS for name in names) or len(set(names)) < len(names):
        return f"must be empty or a comma-separated list of {' and '.join(TRACKERS)}"
    return None


def step_window(value: str) -> str | None:
    start, colon, stop = value.partition(":")
    if value and not (colon and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        return "must be empty or START:STOP, two step numbers with START < STOP (e.g. 10:20)"
    return None


INT32_MAX = 2**31 - 1  # counts and sizes reach the compiled programs as int32
# Query positions per block of the lecture's attention on CPU (query_block=0, auto) from block_size 256 up: the whole
# step at the sweep's T = 256 ran 14% faster than with one block; at T = 128 no gain beyond the noise, so one block
# there (benchmarks/RESULTS.md, issue 25).
CPU_QUERY_BLOCK = 64


def option(default: Any, help: str, rule: Rule | None = None, *, flag: bool = True) -> Any:
    """A config field: its default, its one-line description and its rule (`flag=False`: set by jaxgpt, no flag)."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "cmd": flag})


def check_fields(config: Any) -> None:
    """Every field of the dataclass `config` has its annotated type (Literal choices included) and obeys its
    rule; numbers are finite. Raises UsageError naming the first field that does not."""
    kinds = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        name, value, tp = field.name, getattr(config, field.name), hints[field.name]
        args = typing.get_args(tp)
        if type(None) in args:
            if value is None:
                continue
            tp = next(a for a in args if a is not type(None))
        if typing.get_origin(tp) is Literal:
            if value not in typing.get_args(tp):
                raise UsageError(f"{name} must be one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
            continue
        if tp not in kinds:
            continue  # a nested config: checked by its own __post_init__
        allowed = (int, float) if tp is float else tp
        if not isinstance(value, allowed) or (tp is not bool and isinstance(value, bool)):
            raise UsageError(f"{name} must be {kinds[tp]}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value}")
        rule = field.metadata.get("rule")
        problem = rule(value) if rule else None
        if problem:
            raise UsageError(f"{name} {problem}, got {value}")
        if tp is int and rule is not seed_range and value > INT32_MAX:
            raise UsageError(f"{name} must be at most {INT32_MAX:,} (2**31 - 1), got {value:,}")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model hyperparameters; the defaults are the lecture's final 10.79M model.

    A few switches (`activation`, `tie_embeddings`, `bias`, `qkv_bias`, `lm_head_bias`) also describe the GPT-2
    family (nanoGPT, Hugging Face GPT-2), so their checkpoints load into the same modules. Others are the modern
    recipe (`position="rope"`, `norm="rmsnorm"`, `qk_norm`, `activation="relu2"`, `zero_init_proj`,
    `logit_softcap`); each is off by default and composes with the rest (docs/library.md, "Modern options").
    """

    vocab_size: int = option(65, "tokens in the vocabulary (set from the data)", positive, flag=False)
    block_size: int = option(256, "maximum context length", positive)
    n_layer: int = option(6, "transformer blocks", positive)
    n_head: int = option(6, "attention heads per block; must divide n_embd", positive)
    n_embd: int = option(384, "channels of the residual stream", positive)
    dropout: float = option(0.2, "dropout rate in training (attention weights, after projections)", unit_interval)
    activation: Activation = option("relu", "MLP non-linearity: gelu for nanoGPT, gelu_tanh for Hugging Face GPT-2, "
                                            "relu2 is ReLU squared")
    tie_embeddings: bool = option(False, "the output layer reuses the token embedding (GPT-2)")
    bias: bool = option(True, "biases in the attention projection, MLP and LayerNorm")
    qkv_bias: bool = option(False, "biases in the query/key/value projections (GPT-2: true)")
    lm_head_bias: bool = option(True, "bias in the output layer (GPT-2: false)")
    layer_norm_eps: float = option(1e-5, "LayerNorm epsilon (also RMSNorm's, and qk_norm's)", positive)
    position: Position = option("learned", "learned: the lecture's position table; rope: rotary embeddings of "
                                           "queries and keys as in Llama, no table")
    rope_theta: float = option(10000.0, "RoPE base: head dims i and i + head_size/2 turn by "
                                        "rope_theta**(-2i/head_size) per position", positive)
    norm: Norm = option("layernorm", "layernorm: the lecture's; rmsnorm: RMSNorm with a learned scale (no bias)")
    qk_norm: bool = option(False, "RMSNorm (learned scale over head_size) of each head's queries and keys, before RoPE")
    zero_init_proj: bool = option(False, "initialise the attention output and MLP output projections to zero")
    scale_proj_init: bool = option(False, "initialise those projections with std 0.02 / sqrt(2 * n_layer), as GPT-2 "
                                          "and nanoGPT do (the lecture: 0.02)")
    logit_softcap: float = option(0.0, "0: off; else logits = softcap * tanh(logits / softcap), in float32",
                                  non_negative)
    dtype: Dtype = option("auto", "matmul compute dtype; auto: float32 on CPU, bfloat16 on GPU/TPU")
    attention: Attention = option("xla", "xla: the lecture's attention; dot_product: jax.nn.dot_product_attention "
                                         "(XLA's); cudnn: its cuDNN flash attention (GPU, bfloat16); splash: the "
                                         "Pallas splash attention kernel (TPU, block_size a multiple of 128); "
                                         "cudnn and splash have no dropout")
    dense_kernel: DenseKernel = option("auto", "Dense layers' matmul; auto: cpu (a faster backward) on CPU, else xla")
    query_block: int = option(0, "attention=xla without dropout on the weights: queries in blocks of this many "
                                 "positions, each against only the keys up to its end (the masked upper triangle "
                                 "is skipped; equal within float32 rounding); 0: auto, 64 on CPU for block_size >= "
                                 "256, else block_size (one block)", non_negative)
    model_type: ModelType = option("gpt", "gpt: the lecture's transformer; bigram: its first model, a (V, V) table")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head:
            divisor = min((d for d in range(1, self.n_embd + 1) if self.n_embd % d == 0),
                          key=lambda d: (abs(d - self.n_head), d))
            raise UsageError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                             f"try n_head={divisor}")
        if self.model_type == "bigram" and (changed := [name for name in TRANSFORMER_OPTIONS if
                                                       getattr(self, name) != _DEFAULTS[name]]):
            raise UsageError(f"{', '.join(changed)} {'does' if len(changed) == 1 else 'do'} nothing for "
                             "model_type='bigram' (a (V, V) table of next-token logits); leave "
                             f"{'it' if len(changed) == 1 else 'them'} at the default or use model_type='gpt'")
        if self.zero_init_proj and self.scale_proj_init:
            raise UsageError("zero_init_proj and scale_proj_init are two inits of the same projections; set one")
        if self.attention in FUSED_ATTENTION and self.dropout:
            raise UsageError(f"attention={self.attention!r} has no dropout on the attention weights, got dropout="
                             f"{self.dropout}; set --dropout=0 or use --attention=xla (the lecture's, with dropout)")
        if self.attention == "splash" and self.block_size % 128:
            raise UsageError(f"attention='splash' works in blocks of 128 positions: block_size must be a multiple of "
                             f"128, got {self.block_size}")
        if self.position == "rope" and self.head_size % 2:
            raise UsageError(f"position='rope' rotates pairs of head dimensions: the head size n_embd / n_head must "
                             f"be even, got {self.n_embd} / {self.n_head} = {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def resolved(self, backend: str | None = None) -> GPTConfig:
        """This config with the "auto" choices made for `backend` (default: JAX's default backend), refused where
        it cannot run there (cuDNN's attention off a GPU or in float32)."""
        backend = backend or jax.default_backend()
        config = self.with_auto_choices(backend)
        if config.attention == "cudnn" and (backend != "gpu" or config.dtype != "bfloat16"):
            where = f"dtype={config.dtype}" if backend == "gpu" else f"the {backend} backend"
            raise UsageError(f"attention='cudnn' is NVIDIA's fused kernel for bfloat16 on a GPU, not for {where}; use "
                             "--attention=xla or dot_product, or compile for a GPU: --compile_for=h100-1")
        if config.attention == "splash" and backend != "tpu":
            raise UsageError(f"attention='splash' is a TPU kernel (Pallas, Mosaic), not for the {backend} backend; use "
                             "--attention=xla or dot_product, or compile for a TPU: --compile_for=tpu-v5e-1")
        return config

    def with_auto_choices(self, backend: str | None = None) -> GPTConfig:
        """The "auto" dtype, dense_kernel and query_block made for `backend` (default: JAX's default backend);
        nothing checked: the model applies it where it is traced, which may be for another device than this
        process's."""
        backend = backend or jax.default_backend()
        dtype = ("float32" if backend == "cpu" else "bfloat16") if self.dtype == "auto" else self.dtype
        kernel = ("cpu" if backend == "cpu" else "xla") if self.dense_kernel == "auto" else self.dense_kernel
        query_block = self.query_block or (
            CPU_QUERY_BLOCK if backend == "cpu" and self.block_size >= 4 * CPU_QUERY_BLOCK else self.block_size)
        return dataclasses.replace(self, dtype=dtype, dense_kernel=kernel, query_block=query_block)


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(GPTConfig)}
# The transformer's switches, which the bigram model (a table) has no use for: they must keep their defaults.
TRANSFORMER_OPTIONS = ("activation", "tie_embeddings", "bias", "qkv_bias", "lm_head_bias", "layer_norm_eps",
                       "position", "rope_theta", "norm", "qk_norm", "zero_init_proj", "scale_proj_init",
                       "logit_softcap", "attention")
# What else the bigram model does not use: sizes a config file may state (configs/bigram.py), refused as flags.
TRANSFORMER_SIZES = ("n_layer", "n_head", "n_embd", "dropout", "dtype", "dense_kernel", "query_block")


def sizes_unused_by(model: GPTConfig) -> tuple[frozenset[str], str]:
    """The fields of `model` that its kind of model does not use (refused as flags), and why."""
    if model.model_type == "bigram":
        return frozenset(TRANSFORMER_SIZES), "model_type='bigram' is a table, not a transformer"
    return frozenset(), ""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data; the defaults are the lecture's gpt.py."""

    model: GPTConfig = GPTConfig()
    # data and output
    data_path: str | None = option(None, "UTF-8 text file (character tokens) or a dataset directory from python -m "
                                         "jaxgpt.prepare; none: $JAXGPT_DATA, the cache or a download")
    out_dir: str = option("out", "run directory: config, tokenizer, metrics, checkpoints, loss plot")
    overwrite: bool = option(False, "replace the run in a non-empty out_dir")
    resume: bool = option(False, "continue the run in out_dir from its latest usable checkpoint")
    init_from: str | None = option(None, "start from pretrained weights, not a fresh init: gpt2, gpt2-medium, "
                                         "gpt2-large, gpt2-xl (Hugging Face hub), a run directory, a save_pretrained "
                                         "directory or a .pt file; the model is theirs (docs/pretrained.md)")
    # training loop (the lecture's names)
    batch_size: int = option(64, "sequences per micro-batch, all devices together (one micro-batch per step unless "
                                 "grad_accum > 1)", positive)
    grad_accum: int = option(1, "micro-batches per optimizer step, their gradients averaged in the compiled step: "
                                "one batch of grad_accum * batch_size sequences in the memory of one", positive)
    max_iters: int = option(5000, "optimizer steps in all", non_negative)
    eval_interval: int = option(500, "steps between loss estimates", positive)
    eval_iters: int = option(200, "batches per loss estimate", positive)
    eval_at_start: bool = option(True, "estimate the losses at step 0 too, before training")
    eval_mode: EvalMode = option("sampled", "sampled: eval_iters random batches per split (the lecture's); full: "
                                 "val loss over the whole val split in consecutive windows (deterministic)")
    seed: int = option(1337, "the seed every random draw derives from, with the step", seed_range)
    steps_per_call: int = option(0, "optimizer steps per compiled call, at most; 0: chosen from the model's size "
                                    "(same results either way)", non_negative)
    # optimizer: torch.optim.AdamW's defaults
    learning_rate: float = option(3e-4, "peak learning rate", positive)
    beta1: float = option(0.9, "AdamW beta1", unit_interval)
    beta2: float = option(0.999, "AdamW beta2", unit_interval)
    eps: float = option(1e-8, "AdamW epsilon", positive)
    weight_decay: float = option(0.01, "AdamW decoupled weight decay", non_negative)
    decay_all_params: bool = option(True, "false: no weight decay on biases, LayerNorm and embeddings")
    decay_embeddings: bool = option(False, "with decay_all_params=false, decay the embedding tables too, as nanoGPT "
                                           "does (every matrix)")
    lr_schedule: LRSchedule = option("constant", "constant, or cosine decay to min_lr at max_iters")
    warmup_iters: int = option(0, "steps of linear warmup, with either schedule", non_negative)
    warmup: Warmup = option("from_zero", "from_zero: step i at lr * i / warmup_iters (optax's; step 0 learns "
                                         "nothing); nanogpt: lr * (i + 1) / (warmup_iters + 1)")
    min_lr: float = option(0.0, "where cosine decay ends", non_negative)
    grad_clip: float = option(0.0, "maximum global gradient norm; 0 disables clipping", non_negative)
    # Muon (Keller Jordan's; optax.contrib.muon) for the blocks' matrices: --optimizer=muon
    optimizer: Optimizer = option("adamw", "adamw: AdamW for every parameter; muon: Muon for the blocks' weight "
                                           "matrices, AdamW for embeddings, lm_head, biases and norms")
    muon_lr: float = option(0.02, "Muon's peak learning rate (the schedule of learning_rate, scaled)", positive)
    muon_momentum: float = option(0.95, "Muon's Nesterov momentum", unit_interval)
    muon_ns_steps: int = option(5, "Newton–Schulz iterations that orthogonalize each Muon update", positive)
    muon_weight_decay: float = option(0.0, "Muon's decoupled weight decay (times Muon's learning rate)",
                                     non_negative)
    # checkpoints: every interval, at the end, on SIGINT/SIGTERM, and the best val loss
    checkpoint_interval: int = option(500, "steps between checkpoints", positive)
    keep_checkpoints: int = option(3, "how many of the latest checkpoints to keep", positive)
    # reporting
    sample_chars: int = option(500, "tokens (characters with the char tokenizer) of the sample printed at the end; "
                                    "0: none", non_negative)
    progress: bool = option(True, "progress bar between evaluations")
    health_metrics: bool = option(True, "each evaluation records the gradient norm, the fraction of steps clipped and "
                                        "each parameter group's update/param RMS ratio (computed in the step)")
    plot: bool = option(True, "write loss.png, the run's loss curves, at the end (needs matplotlib; ~2 s on a CPU)")
    inspect: bool = option(True, "write inspect.html at the end: each token's loss and every head's attention over "
                                 "a stretch of val text (python -m jaxgpt.inspect)")
    log_to: str = option("", "experiment trackers, comma-separated: tensorboard, wandb; empty: none (metrics.jsonl "
                             "always)", tracker_names)
    profile: str = option("", "START:STOP: a jax.profiler trace of those steps in out_dir/profile/; empty: none",
                          step_window)
    peak_flops: float | None = option(None, "FLOP/s of all devices together, for MFU; none: look the devices up",
                                      positive)
    # scaling out (jaxgpt/system/sharding.py)
    fsdp: int = option(1, "devices that share one copy of the parameters; must divide the device count", positive)
    multihost: bool = option(False, "join other processes with jax.distributed.initialize (TPU pods, clusters)")

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig):
            raise UsageError(f"model must be a GPTConfig, got {self.model!r}")
        check_fields(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in out_dir and --overwrite replaces it; choose one")
        if (tokens := self.grad_accum * self.batch_size * self.block_size) > INT32_MAX:
            raise UsageError(f"a step of grad_accum * batch_size * block_size = {tokens:,} tokens is more than the "
                             f"{INT32_MAX:,} (2**31 - 1) a step can index; lower --grad_accum or --batch_size")
        if self.decay_embeddings and self.decay_all_params:
            raise UsageError("decay_embeddings=true chooses the embeddings among the decayed parameters of "
                             "decay_all_params=false, and decay_all_params=true decays them anyway; set "
                             "--decay_all_params=false with it")
        if self.optimizer == "muon" and self.model.model_type == "bigram":
            raise UsageError("optimizer='muon' updates the transformer blocks' matrices, and model_type='bigram' has "
                             "none: it would train exactly as adamw; use optimizer='adamw'")

    @property
    def block_size(self) -> int:
        return self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        try:
            values = dict(values)
            model = dict(values.pop("model"))
            if "model_type" in values:  # written by jaxgpt before model_type moved into the model's config
                model["model_type"] = values.pop("model_type")
            return cls(model=GPTConfig(**model), **values)
        except (TypeError, KeyError, AttributeError) as err:  # unknown or missing fields, a wrong type
            raise UsageError(f"config fields do not match this jaxgpt ({type(err).__name__}: {err})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> TrainConfig:
        """A config saved by `to_json` (a run's config.json); `source` names it in errors."""
        try:
            return cls.from_dict(json.loads(text))
        except ValueError as err:  # bad JSON, or from_dict's UsageError
            raise UsageError(f"{source} is not a valid jaxgpt config: {err}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """A config saved by `save` (a run's config.json)."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"), str(path))

    def for_vocab(self, vocab_size: int, backend: str | None = None) -> TrainConfig:
        """This config with the model's vocab_size set (from the data) and its "auto" choices resolved for
        `backend` (default: JAX's default backend)."""
        model = dataclasses.replace(self.model, vocab_size=vocab_size).resolved(backend)
        return dataclasses.replace(self, model=model)

    def as_saved(self) -> TrainConfig:
        """The config as written to config.json and checkpoints: without the one-off --resume/--overwrite."""
        return dataclasses.replace(self, resume=False, overwrite=False)


# GPTConfig fields that say how to compute, not what the weights mean: an exported model's config.json may change
# them, and a run started from pretrained weights (--init_from) chooses them.
HOW_TO_COMPUTE = frozenset({"dropout", "dtype", "attention", "dense_kernel", "query_block"})

# Training fields that may change on resume without changing what is computed.
FREE_ON_RESUME = frozenset({"eval_interval", "eval_iters", "eval_mode", "eval_at_start", "checkpoint_interval",
                            "keep_checkpoints", "progress", "health_metrics", "plot", "log_to", "profile",
                            "sample_chars", "out_dir", "overwrite", "resume", "data_path", "steps_per_call",
                            "init_from"})  # only a new run reads it; a resumed one continues from its checkpoint
# no effect with optimizer="adamw"
MUON_FIELDS = frozenset({"muon_lr", "muon_momentum", "muon_ns_steps", "muon_weight_decay"})


def resume_changes(saved: TrainConfig, current: TrainConfig, where: str) -> list[str]:
    """Refuse a config whose model or optimizer-state structure differs from the checkpoint's (UsageError
    naming the fields); otherwise return the changed fields that make the continuation differ, e.g. a new
    learning_rate, muon_lr or max_iters. Every model field but dropout must match, and so must the optimizer."""
    model_fields = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "dropout"]
    fixed = [(name, getattr(saved.model, name), getattr(current.model, name)) for name in model_fields]
    fixed.append(("decay_all_params", saved.decay_all_params, current.decay_all_params))
    fixed.append(("grad_clip > 0", saved.grad_clip > 0, current.grad_clip > 0))  # clipping adds optimizer state
    fixed.append(("optimizer", saved.optimizer, current.optimizer))
    mismatched = [f"{name} (checkpoint {old!r}, now {new!r})" for name, old, new in fixed if old != new]
    if mismatched:
        raise UsageError(f"cannot resume from {where}: the config differs in {', '.join(mismatched)}; "
                         "use the checkpoint's values or a new --out_dir")
    changed = [("dropout", saved.model.dropout, current.model.dropout)]
    unused = MUON_FIELDS if current.optimizer != "muon" else frozenset()
    changed += [(f.name, getattr(saved, f.name), getattr(current, f.name)) for f in dataclasses.fields(TrainConfig)
                if f.name != "model" and f.name not in FREE_ON_RESUME | unused]
    return [f"{name} {old!r} -> {new!r}" for name, old, new in changed if old != new]


def available_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    files = importlib.resources.files("jaxgpt.configs").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def load_config(name_or_path: str) -> TrainConfig:
    """A config by name (`small`, from `configs/`), by path (`path/to/file.py`) or a run's `config.json`.
    A bare name is always a shipped config, even where the working directory holds a folder of that name."""
    is_path = name_or_path.endswith((".py", ".json")) or os.sep in name_or_path
    if is_path and Path(name_or_path).is_dir():
        raise UsageError(f"config {name_or_path!r} is a directory; give a config name, a .py file or a "
                         "run's config.json")
    if name_or_path.endswith(".json"):
        if not Path(name_or_path).is_file():
            raise UsageError(f"config file {name_or_path!r} does not exist")
        return TrainConfig.load(name_or_path)
    if is_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"config file {name_or_path!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"jaxgpt_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except UsageError:
            raise
        except Exception as err:  # the user's file: a syntax error, a failing import, a wrong value ...
            moved = isinstance(err, ModuleNotFoundError) and (err.name or "").startswith("jaxgpt.")
            hint = "; jaxgpt's modules moved in 0.2: write `from jaxgpt import GPTConfig, TrainConfig`" if moved else ""
            raise UsageError(f"config file {name_or_path!r} failed: {type(err).__name__}: {err}{hint}") from None
    else:
        names = available_configs()
        if name_or_path not in names:
            raise UsageError(f"unknown config {name_or_path!r}; choose one of {', '.join(names)} or give a .py path")
        module = importlib.import_module(f"jaxgpt.configs.{name_or_path}")
    config = getattr(module, "config", None)
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config {name_or_path!r} must define `config = TrainConfig(...)`")
    return config
