"""PyTorch GPT checkpoints to jaxgpt parameters and back (the command line is `python -m jaxgpt.convert`).

Three `state_dict()` layouts are understood:

- "lecture": the lecture's gpt.py (`token_embedding_table.weight`, `blocks.0.sa.heads.0.key.weight`, ...);
- "nanogpt": nanoGPT's model.py (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight` of shape (3C, C));
- "hf": Hugging Face `GPT2LMHeadModel` (the same names, but its Conv1D weights are stored (in, out): (C, 3C)).

A torch Linear weight is (out, in); a flax Dense kernel is (in, out), its transpose. Conversion is in float32
and exact both ways. Importing this module does not import torch; reading a .pt file and
`to_torch_state_dict` do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgpt.core.config import GPTConfig, TrainConfig
from jaxgpt.core.model import check_params, count_params, param_shapes
from jaxgpt.data.text import read_text, resolve_data_path
from jaxgpt.data.tokenizers import CharTokenizer, Tokenizer, gpt2_tokenizer, load_tokenizer
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError

Layout = Literal["lecture", "nanogpt", "hf"]
LAYOUTS: tuple[Layout, ...] = ("lecture", "nanogpt", "hf")

# The modern options that no layout's PyTorch model has: a state_dict of any layout implies these values.
# (zero_init_proj and scale_proj_init are absent: they change only the initialisation, which a state_dict does not
# need to express.)
_GPT2_ERA: dict[str, Any] = {"position": "learned", "norm": "layernorm", "qk_norm": False, "logit_softcap": 0.0}

# GPTConfig fields that a layout implies (a state_dict does not record them). nanoGPT also has qkv_bias == bias.
LAYOUT_FIELDS: dict[str, dict[str, Any]] = {
    "lecture": {"activation": "relu", "tie_embeddings": False, "bias": True, "qkv_bias": False,
                "lm_head_bias": True, "layer_norm_eps": 1e-5, **_GPT2_ERA},
    "nanogpt": {"activation": "gelu", "lm_head_bias": False, "layer_norm_eps": 1e-5, **_GPT2_ERA},
    "hf": {"activation": "gelu_tanh", "bias": True, "qkv_bias": True, "lm_head_bias": False, "layer_norm_eps": 1e-5,
           **_GPT2_ERA},
}

# Buffers, not parameters: the lecture's causal masks, nanoGPT's (without flash attention) and older HF GPT-2's.
_BUFFER = re.compile(r"(blocks\.\d+\.sa\.heads\.\d+\.tril|transformer\.h\.\d+\.attn\.(bias|masked_bias))")
_COMPILED_PREFIX = "_orig_mod."  # added to every key by torch.compile
_TIED_HEAD = "lm_head.weight"  # nanoGPT and HF GPT-2 store the tied output layer under this key too


@dataclasses.dataclass(frozen=True)
class _Rule:
    """jax leaves <-> torch tensors. The torch tensors joined along `axis` (then transposed if `transpose`) are the
    jax leaves joined along the matching axis; one side always has a single tensor."""

    jax_paths: tuple[str, ...]
    torch_keys: tuple[str, ...]
    transpose: bool = False
    axis: int = 0  # the torch axis along which tensors are joined or split

    def _jax_axis(self, ndim: int) -> int:
        return ndim - 1 - self.axis if self.transpose else self.axis

    def to_jax(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        joined = np.concatenate(tensors, axis=self.axis)
        joined = joined.T if self.transpose else joined
        return np.split(joined, len(self.jax_paths), axis=self._jax_axis(joined.ndim))

    def to_torch(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        joined = np.concatenate(leaves, axis=self._jax_axis(leaves[0].ndim))
        joined = joined.T if self.transpose else joined
        return np.split(joined, len(self.torch_keys), axis=self.axis)

    def torch_shapes(self, jax_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The shape each torch tensor must have, given the jax leaves' shapes."""
        jax_axis = self._jax_axis(len(jax_shapes[0]))
        joined = list(jax_shapes[0])
        joined[jax_axis] = sum(shape[jax_axis] for shape in jax_shapes)
        joined = joined[::-1] if self.transpose else joined
        joined[self.axis] //= len(self.torch_keys)
        return [tuple(joined)] * len(self.torch_keys)


def _one(jax_path: str, torch_key: str, transpose: bool = False) -> _Rule:
    return _Rule((jax_path,), (torch_key,), transpose)


def _linear(jax_name: str, torch_name: str, bias: bool, conv1d: bool = False) -> list[_Rule]:
    """nn.Linear (weight (out, in)) or GPT-2's Conv1D (weight (in, out)) <-> nn.Dense."""
    rules = [_one(f"{jax_name}/kernel", f"{torch_name}.weight", transpose=not conv1d)]
    return rules + [_one(f"{jax_name}/bias", f"{torch_name}.bias")] if bias else rules


def _layer_norm(jax_name: str, torch_name: str, bias: bool) -> list[_Rule]:
    rules = [_one(f"{jax_name}/scale", f"{torch_name}.weight")]
    return rules + [_one(f"{jax_name}/bias", f"{torch_name}.bias")] if bias else rules


def _lecture_rules(config: GPTConfig) -> list[_Rule]:
    rules = [_one("token_embedding_table/embedding", "token_embedding_table.weight"),
             _one("position_embedding_table/embedding", "position_embedding_table.weight")]
    for i in range(config.n_layer):
        block, t = f"blocks_{i}", f"blocks.{i}"
        rules += _layer_norm(f"{block}/ln1", f"{t}.ln1", bias=True)
        for name in ("query", "key", "value"):  # head h's (hs, C) weight -> kernel columns h*hs:(h+1)*hs
            heads = tuple(f"{t}.sa.heads.{h}.{name}.weight" for h in range(config.n_head))
            rules.append(_Rule((f"{block}/sa/{name}/kernel",), heads, transpose=True))
        rules += _linear(f"{block}/sa/proj", f"{t}.sa.proj", bias=True)
        rules += _layer_norm(f"{block}/ln2", f"{t}.ln2", bias=True)
        rules += _linear(f"{block}/ffwd/fc", f"{t}.ffwd.net.0", bias=True)
        rules += _linear(f"{block}/ffwd/proj", f"{t}.ffwd.net.2", bias=True)
    return rules + _layer_norm("ln_f", "ln_f", bias=True) + _linear("lm_head", "lm_head", bias=True)


def _gpt2_rules(config: GPTConfig, conv1d: bool) -> list[_Rule]:
    """nanoGPT (nn.Linear) and Hugging Face GPT-2 (Conv1D): c_attn is query, key and value side by side."""
    rules = [_one("token_embedding_table/embedding", "transformer.wte.weight"),
             _one("position_embedding_table/embedding", "transformer.wpe.weight")]
    for i in range(config.n_layer):
        block, t = f"blocks_{i}", f"transformer.h.{i}"
        qkv = [f"{block}/sa/{name}" for name in ("query", "key", "value")]
        rules += _layer_norm(f"{block}/ln1", f"{t}.ln_1", config.bias)
        rules.append(_Rule(tuple(f"{p}/kernel" for p in qkv), (f"{t}.attn.c_attn.weight",), transpose=not conv1d,
                           axis=1 if conv1d else 0))
        if config.qkv_bias:
            rules.append(_Rule(tuple(f"{p}/bias" for p in qkv), (f"{t}.attn.c_attn.bias",)))
        rules += _linear(f"{block}/sa/proj", f"{t}.attn.c_proj", config.bias, conv1d)
        rules += _layer_norm(f"{block}/ln2", f"{t}.ln_2", config.bias)
        rules += _linear(f"{block}/ffwd/fc", f"{t}.mlp.c_fc", config.bias, conv1d)
        rules += _linear(f"{block}/ffwd/proj", f"{t}.mlp.c_proj", config.bias, conv1d)
    rules += _layer_norm("ln_f", "transformer.ln_f", config.bias)
    if not config.tie_embeddings:
        rules += _linear("lm_head", "lm_head", config.lm_head_bias)  # nn.Linear in both
    return rules


def _rules(config: GPTConfig, layout: Layout) -> list[_Rule]:
    return _lecture_rules(config) if layout == "lecture" else _gpt2_rules(config, conv1d=layout == "hf")


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (converted without importing torch) or array -> float32 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value, dtype=np.float32)


def _normalize_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {key.removeprefix(_COMPILED_PREFIX): value for key, value in state_dict.items()}


def detect_layout(state_dict: Mapping[str, Any]) -> Layout:
    """Which model wrote this state_dict: the lecture's gpt.py, nanoGPT or Hugging Face GPT-2."""
    state_dict = _normalize_keys(state_dict)
    if "token_embedding_table.weight" in state_dict:
        return "lecture"
    if "transformer.wte.weight" in state_dict:
        key = "transformer.h.0.attn.c_attn.weight"
        if key not in state_dict:
            raise UsageError(f"the state_dict has transformer.wte.weight but no {key}; it is not a GPT-2 layout")
        n_embd = tuple(state_dict["transformer.wte.weight"].shape)[1]
        shape = tuple(state_dict[key].shape)
        if shape == (3 * n_embd, n_embd):
            return "nanogpt"
        if shape == (n_embd, 3 * n_embd):
            return "hf"
        raise UsageError(f"{key} has shape {shape}; expected ({3 * n_embd}, {n_embd}) (nanoGPT) or "
                         f"({n_embd}, {3 * n_embd}) (Hugging Face GPT-2)")
    some = ", ".join(sorted(state_dict)[:3]) or "none"
    raise UsageError("unknown checkpoint layout: expected token_embedding_table.weight (the lecture's gpt.py) or "
                     f"transformer.wte.weight (nanoGPT, Hugging Face GPT-2); found keys {some}")


def _count_indexed(keys: list[str], pattern: str) -> int:
    """1 + the largest i in keys matching `pattern` (which captures i); 0 if none match."""
    indices = [int(m.group(1)) for key in keys if (m := re.match(pattern, key))]
    return max(indices, default=-1) + 1


def _is_tied(state_dict: Mapping[str, np.ndarray]) -> bool:
    head = state_dict.get(_TIED_HEAD)
    return head is None or np.array_equal(_to_numpy(head), _to_numpy(state_dict["transformer.wte.weight"]))


def infer_config(state_dict: Mapping[str, Any], n_head: int | None = None, dropout: float = 0.0) -> GPTConfig:
    """The GPTConfig that a state_dict's keys and shapes describe; `n_head` is needed for nanoGPT and HF GPT-2."""
    state_dict = _normalize_keys(state_dict)
    layout = detect_layout(state_dict)
    keys = list(state_dict)
    if layout == "lecture":
        wte, wpe = "token_embedding_table.weight", "position_embedding_table.weight"
        n_layer = _count_indexed(keys, r"blocks\.(\d+)\.")
        heads = _count_indexed(keys, r"blocks\.0\.sa\.heads\.(\d+)\.")
        if not heads:
            raise UsageError(f"the lecture state_dict has no blocks.0.sa.heads.* keys ({n_layer} blocks found): it "
                             "is not a whole model; save it with torch.save(model.state_dict(), path)")
        if n_head is not None and n_head != heads:
            raise UsageError(f"n_head={n_head} was given but the lecture state_dict has {heads} heads per block")
        n_head, fields = heads, LAYOUT_FIELDS[layout]
    else:
        wte, wpe = "transformer.wte.weight", "transformer.wpe.weight"
        n_layer = _count_indexed(keys, r"transformer\.h\.(\d+)\.")
        if n_head is None:
            raise UsageError(f"a {layout} state_dict does not record the number of heads; pass n_head (--n_head=N)")
        fields = {**LAYOUT_FIELDS[layout], "tie_embeddings": _is_tied(state_dict)}
        if layout == "nanogpt":
            has_bias = "transformer.ln_f.bias" in state_dict
            fields.update(bias=has_bias, qkv_bias=has_bias)
    if wpe not in state_dict:
        raise UsageError(f"the {layout} state_dict is missing {wpe}")
    vocab_size, n_embd = tuple(state_dict[wte].shape)
    block_size = tuple(state_dict[wpe].shape)[0]
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     dropout=dropout, **fields)


def _check_tensors(state_dict: Mapping[str, np.ndarray], rules: list[_Rule], config: GPTConfig,
                   layout: Layout) -> None:
    """Every expected key present with its shape, and nothing else but the tied lm_head (buffers are gone)."""
    expected: dict[str, tuple[int, ...]] = {}
    jax_shapes = param_shapes(config)
    for rule in rules:
        shapes = rule.torch_shapes([jax_shapes[path] for path in rule.jax_paths])
        expected.update(zip(rule.torch_keys, shapes, strict=True))
    ignored = {_TIED_HEAD} if layout != "lecture" and config.tie_embeddings else set()
    present = state_dict.keys() - ignored
    missing, extra = sorted(expected.keys() - present), sorted(present - expected.keys())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"the {layout} state_dict is missing {missing[0]}{more}")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UsageError(f"unexpected key {extra[0]}{more} in a {layout} state_dict")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise UsageError(f"{key} has shape {tuple(state_dict[key].shape)}, expected {shape}")


def from_torch_state_dict(state_dict: Mapping[str, Any], *, n_head: int | None = None,
                          dropout: float = 0.0, dtype: Any = jnp.float32) -> tuple[GPTConfig, dict]:
    """A PyTorch state_dict (lecture, nanoGPT or HF GPT-2 layout) -> (GPTConfig, jaxgpt params).

    The layout and config come from the keys and shapes; nanoGPT and HF GPT-2 state_dicts do not record
    `n_head`, so it must be given for them. `dropout` is not recorded either and goes into the config as given.
    The params are float32, or `dtype` (bfloat16 for inference: each tensor cast as it is converted).
    """
    state_dict = _normalize_keys(state_dict)
    tensors = {key: _to_numpy(value) for key, value in state_dict.items() if not _BUFFER.fullmatch(key)}
    layout = detect_layout(tensors)
    config = infer_config(tensors, n_head, dropout)
    rules = _rules(config, layout)
    _check_tensors(tensors, rules, config, layout)
    broken = next((key for key in sorted(tensors) if not np.isfinite(tensors[key]).all()), None)
    if broken:
        raise UsageError(f"{broken} holds NaN or infinite values; the checkpoint is damaged or from a diverged run")
    flat = {}
    for rule in rules:
        leaves = rule.to_jax([tensors[key] for key in rule.torch_keys])
        flat.update((path, jnp.asarray(leaf, dtype)) for path, leaf in zip(rule.jax_paths, leaves, strict=True))
    return config, traverse_util.unflatten_dict(flat, sep="/")


def _check_layout_fields(config: GPTConfig, layout: Layout) -> None:
    required = {"model_type": "gpt", **LAYOUT_FIELDS[layout]}  # the layouts are the transformer's, not the bigram's
    if layout == "nanogpt":
        required["qkv_bias"] = config.bias
    wrong = [name for name, value in required.items() if getattr(config, name) != value]
    if wrong:
        needs = ", ".join(f"{name}={required[name]!r}" for name in wrong)
        have = ", ".join(f"{name}={getattr(config, name)!r}" for name in wrong)
        raise UsageError(f"the {layout} layout needs {needs}; the config has {have}")


def to_layout_arrays(params: Mapping[str, Any], config: GPTConfig, layout: Layout = "lecture") -> dict[str, np.ndarray]:
    """jaxgpt params -> the layout's state_dict as float32 numpy arrays (`to_torch_state_dict` without torch)."""
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _check_layout_fields(config, layout)
    check_params(config, params)
    flat = {path: np.asarray(leaf, np.float32) for path, leaf in traverse_util.flatten_dict(params, sep="/").items()}
    arrays = {}
    for rule in _rules(config, layout):
        tensors = rule.to_torch([flat[path] for path in rule.jax_paths])
        arrays.update(zip(rule.torch_keys, map(np.ascontiguousarray, tensors), strict=True))
    if layout == "lecture":
        tril = np.tril(np.ones((config.block_size, config.block_size), np.float32))
        arrays.update((f"blocks.{i}.sa.heads.{h}.tril", tril.copy())
                      for i in range(config.n_layer) for h in range(config.n_head))
    elif config.tie_embeddings:
        arrays[_TIED_HEAD] = arrays["transformer.wte.weight"]
    return arrays


def to_torch_state_dict(params: Mapping[str, Any], config: GPTConfig, layout: Layout = "lecture") -> dict:
    """jaxgpt params -> a PyTorch state_dict (float32 torch tensors) that loads into the layout's model strictly.

    The lecture layout includes its `tril` buffers; nanoGPT and HF GPT-2 include `lm_head.weight` (the token
    embedding, tied) when `config.tie_embeddings`.
    """
    import torch  # here, not at the top: jaxgpt does not depend on torch

    tensors = {key: torch.from_numpy(array) for key, array in to_layout_arrays(params, config, layout).items()}
    if layout != "lecture" and config.tie_embeddings:  # one tensor under both names, as the PyTorch models share it
        tensors[_TIED_HEAD] = tensors["transformer.wte.weight"]
    return tensors


# ----------------------------------------------------------------------------------------------------------------
# a .pt file -> a jaxgpt run directory


def load_torch_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """(state_dict, config hints) from a `torch.save(model.state_dict())` file or a nanoGPT `ckpt.pt`."""
    try:
        import torch
    except ImportError:
        raise UsageError("reading a PyTorch checkpoint needs torch: pip install 'jaxgpt[convert]'") from None
    if not Path(path).is_file():
        raise UsageError(f"{path} is not a file; give a .pt file written by torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and weights-only errors alike: not a plain checkpoint
        raise UsageError(f"cannot read {path} as a PyTorch checkpoint: {_load_failure(err)}; save the model with "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):  # nanoGPT's ckpt.pt
        model_args = obj.get("model_args") or {}
        return dict(obj["model"]), {key: model_args[key] for key in ("n_head", "dropout") if key in model_args}
    if isinstance(obj, Mapping) and obj and all(hasattr(value, "shape") for value in obj.values()):
        return dict(obj), {}
    raise UsageError(f"{path} holds a {type(obj).__name__}, not a state_dict; "
                     "save it with torch.save(model.state_dict(), path)")


def _load_failure(err: Exception) -> str:
    """What torch.load's error says about the file, in a few words: not its advice to unpickle code
    (weights_only=False), nor its terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return f"it holds a pickled {found.group(1)}, which jaxgpt does not unpickle (it could run code)"
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)  # below the advice, what went wrong
    first = detail.group(1) if detail else text.strip().splitlines()[0] if text.strip() else ""
    return f"not a file torch.save wrote ({type(err).__name__}{': ' + first if first else ''})"


def read_tokenizer(path: str | None) -> tuple[Tokenizer, Path | None]:
    """(tokenizer, text it was built from): "gpt2" (GPT-2's encoding, for Hugging Face GPT-2), a tokenizer.json of
    any kind, or the characters of a text file (default: the dataset: $JAXGPT_DATA, the cache or a download)."""
    if path == "gpt2":
        return gpt2_tokenizer(), None
    if path is not None and not Path(path).is_file():
        raise UsageError(f"--tokenizer {path} is not a file; give a text file or a tokenizer.json")
    if path is not None and path.endswith(".json"):
        return load_tokenizer(path), None
    text_path = resolve_data_path(path)
    return CharTokenizer.from_text(read_text(text_path)), text_path


def write_run_dir(out_dir: Path, config: TrainConfig, params, tokenizer: Tokenizer, overwrite: bool) -> None:
    """config.json, tokenizer.json and params, written into a staging folder first and then moved into out_dir,
    which is locked against other writers (a training run) meanwhile."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a directory; choose another OUT_DIR")
    run_dir = RunDir(out_dir)
    run_dir.acquire(print)
    try:
        if not run_dir.is_empty() and not overwrite:
            raise UsageError(f"OUT_DIR {out_dir} is not empty; choose another OUT_DIR or pass --overwrite")
        staging = RunDir(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            staging.write_config(config)
            staging.write_tokenizer(tokenizer)
            checkpoint.save_params(staging, params, config.model)
            run_dir.remove_run()  # --overwrite: no checkpoints of an earlier training run stay behind
            for entry in staging.path.iterdir():
                os.replace(entry, out_dir / entry.name)
        finally:
            shutil.rmtree(staging.path, ignore_errors=True)
    except BaseException:
        run_dir.release(remove_if_unused=True)
        raise
    run_dir.release()


def convert_checkpoint(model_path: str, out_dir: str, tokenizer_path: str | None = None, n_head: int | None = None,
                       overwrite: bool = False) -> str:
    """A PyTorch .pt file -> a jaxgpt run directory (see `write_run_dir`); returns a one-line summary."""
    state_dict, hints = load_torch_checkpoint(model_path)
    if n_head is not None and hints.get("n_head", n_head) != n_head:
        raise UsageError(f"--n_head={n_head} contradicts the checkpoint's model_args n_head={hints['n_head']}")
    layout = detect_layout(state_dict)
    n_head = n_head if n_head is not None else hints.get("n_head")
    model_config, params = from_torch_state_dict(state_dict, n_head=n_head, dropout=hints.get("dropout", 0.0))
    tokenizer, text_path = read_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                         f"{model_config.vocab_size} tokens; pass --tokenizer with the text the model was trained on")
    config = TrainConfig(model=model_config, data_path=None if text_path is None else str(text_path),
                         out_dir=str(out_dir))
    write_run_dir(Path(out_dir), config, params, tokenizer, overwrite)
    sizes = f"{model_config.n_layer} layers, {model_config.n_head} heads, n_embd {model_config.n_embd}"
    n_params = f"{count_params(params) / 1e6:.6f} M parameters"
    return f"converted {layout} checkpoint {model_path} ({n_params}, {sizes}) to {out_dir}"
