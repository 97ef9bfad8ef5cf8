"""Pretrained weights: `load(source)` -> (GPTConfig, params, tokenizer) for GPT-2 from the Hugging Face hub, a jaxgpt
run or converted directory, a PyTorch .pt file or a `save_pretrained` directory; the rules for starting a training
run from them (`run_model`, `crop_block_size`, `check_data_tokenizer`) and bfloat16 weights for inference
(`cast_params`).

The tokenizer travels with the weights: a run directory's own tokenizer.json, GPT-2's encoding for Hugging Face
GPT-2 weights, none for a lecture or nanoGPT .pt file (which does not record one: the data's is used, if its
vocabulary has the model's size). Reading .pt files needs torch; the hub and save_pretrained directories need
huggingface_hub and safetensors (`pip install 'jaxgpt[pretrained]'`), not torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxgpt.core.config import HOW_TO_COMPUTE, GPTConfig
from jaxgpt.data.tokenizers import Tokenizer, describe, gpt2_tokenizer
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError
from jaxgpt.weights.convert import LAYOUT_FIELDS, detect_layout, from_torch_state_dict, load_torch_checkpoint

# --init_from names -> Hugging Face hub repositories (safetensors weights)
HUB_MODELS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
              "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
PRETRAINED_EXTRA = "pip install 'jaxgpt[pretrained]'"  # huggingface_hub and safetensors
# The hub models' (n_layer, n_head, n_embd), from their config.json: their shapes without a download.
HUB_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
             "gpt2-xl": (48, 25, 1600)}
GPT2_VOCAB_SIZE, GPT2_CONTEXT = 50257, 1024


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _hub_constants() -> Any:
    """huggingface_hub's file names of a model repository (config.json, model.safetensors, ...)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        raise UsageError(f"Hugging Face weights need huggingface_hub and safetensors: {PRETRAINED_EXTRA}") from None
    return constants


def hub_snapshot(repo_id: str) -> Path:
    """The local directory (the hub's cache) holding `repo_id`'s config and safetensors weights, downloaded on first
    use. The one place jaxgpt reaches the hub: tests replace it with a local `save_pretrained` directory."""
    names = _hub_constants()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[names.CONFIG_NAME, names.SAFETENSORS_SINGLE_FILE]))
    except Exception as err:  # offline (LocalEntryNotFoundError), HTTP and connection errors, a damaged cache
        raise UsageError(
            f"cannot get {repo_id} from the Hugging Face hub, and it is not in its cache ({_one_line(err)}); on a "
            f"machine with internet run `python -c \"from huggingface_hub import snapshot_download; "
            f"snapshot_download('{repo_id}', allow_patterns=['{names.CONFIG_NAME}', "
            f"'{names.SAFETENSORS_SINGLE_FILE}'])\"` and copy its cache ($HF_HOME/hub, by default "
            "~/.cache/huggingface/hub) here, or pass the directory of a save_pretrained model") from None


# The Hugging Face GPT-2 settings that jaxgpt's GPT computes (convert.LAYOUT_FIELDS["hf"]): config.json key ->
# the values that mean it (None: the key may be absent).
_HF_SETTINGS: dict[str, tuple] = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh", None),
    "layer_norm_epsilon": (1e-5, None),
    "scale_attn_weights": (True, None),
    "scale_attn_by_inverse_layer_idx": (False, None),
}


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of a save_pretrained directory: model.safetensors, the shards its index names, or
    pytorch_model.bin; [] if it has none."""
    names = _hub_constants()
    single, index = directory / names.SAFETENSORS_SINGLE_FILE, directory / names.SAFETENSORS_INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"cannot read {index} ({_one_line(err)})") from None
        return [directory / shard for shard in shards]
    bin_file = directory / names.PYTORCH_WEIGHTS_NAME
    return [bin_file] if bin_file.is_file() else []


def _read_hf_state_dict(files: list[Path]) -> dict[str, Any]:
    """The tensors of safetensors files (numpy, no torch) or of a pytorch_model.bin (torch)."""
    if files[0].suffix != ".safetensors":
        return load_torch_checkpoint(files[0])[0]
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UsageError(f"reading safetensors weights needs safetensors: {PRETRAINED_EXTRA}") from None
    state_dict = {}
    for path in files:
        try:
            state_dict.update(load_file(path))
        except Exception as err:  # a missing shard, a damaged or truncated file, a dtype numpy lacks
            raise UsageError(f"cannot read {path} ({_one_line(err)})") from None
    return state_dict


def read_save_pretrained(directory: str | Path, dtype: str = "float32") -> tuple[GPTConfig, dict]:
    """(GPTConfig, params in `dtype`) of a Hugging Face GPT-2 directory (`GPT2LMHeadModel.save_pretrained`, or a hub
    snapshot): its config.json and its weights (safetensors, sharded or not, or pytorch_model.bin)."""
    directory = Path(directory)
    config_file = directory / _hub_constants().CONFIG_NAME
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {config_file} ({_one_line(err)})") from None
    if not isinstance(hf_config, dict) or hf_config.get("model_type") != "gpt2":
        model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
        raise UsageError(f"{config_file} describes a {model_type!r} model; jaxgpt reads GPT-2 (model_type 'gpt2')")
    for key, allowed in _HF_SETTINGS.items():
        if hf_config.get(key) not in allowed:
            raise UsageError(f"{config_file} has {key}={hf_config[key]!r}, which jaxgpt's GPT does not compute "
                             f"(it computes {allowed[0]!r})")
    if hf_config.get("n_inner") not in (None, 4 * hf_config.get("n_embd", 0)):
        raise UsageError(f"{config_file} has n_inner={hf_config['n_inner']}; jaxgpt's MLP is 4 * n_embd wide")
    files = _hf_weight_files(directory)
    if not files:
        raise UsageError(f"{directory} has a GPT-2 config.json but no weights (model.safetensors or "
                         "pytorch_model.bin)")
    state_dict = _read_hf_state_dict(files)
    # A GPT2Model (the hub's gpt2) names its tensors without GPT2LMHeadModel's "transformer." prefix.
    state_dict = {key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}": value
                  for key, value in state_dict.items()}
    return from_torch_state_dict(state_dict, n_head=hf_config.get("n_head"), dtype=_jax_dtype(dtype))


def _gpt2_encoding_for(config: GPTConfig, source: str) -> Tokenizer:
    """GPT-2's encoding, for Hugging Face GPT-2 weights whose vocabulary it fits."""
    tokenizer = gpt2_tokenizer()
    if tokenizer.vocab_size != config.vocab_size:
        raise UsageError(f"{source} is Hugging Face GPT-2 weights with {config.vocab_size} tokens, but GPT-2's "
                         f"encoding has {tokenizer.vocab_size}; convert it with its own tokenizer: python -m "
                         "jaxgpt.convert MODEL.pt OUT_DIR --tokenizer=FILE")
    return tokenizer


def _has_hf_config(directory: Path) -> bool:
    """Whether `directory` holds a Hugging Face config.json (it names a model_type; a jaxgpt run's does not)."""
    try:
        return "model_type" in json.loads((directory / _hub_constants().CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def load(source: str, dtype: str = "float32") -> tuple[GPTConfig, dict, Tokenizer | None]:
    """(model config, params, tokenizer) of pretrained weights. `source` is one of `HUB_MODELS` (the hub's
    safetensors, cached), a jaxgpt run directory (its latest usable checkpoint) or converted directory (its params),
    a `save_pretrained` directory, or a .pt file (the lecture's, nanoGPT's or Hugging Face's state_dict, or
    nanoGPT's ckpt.pt). The tokenizer is None where the weights do not say which they were trained with. The params
    are in `dtype`: "bfloat16" (for inference) casts Hugging Face and .pt weights tensor by tensor as they are
    converted, so that no float32 copy of the whole model is held."""
    _jax_dtype(dtype)
    if source in HUB_MODELS:
        config, params = read_save_pretrained(hub_snapshot(HUB_MODELS[source]), dtype)
        return config, params, _gpt2_encoding_for(config, source)
    path = Path(source).expanduser()
    if path.is_dir():
        run = RunDir(path)
        if not (run.has_checkpoints() or run.has_params()) and (_hf_weight_files(path) or _has_hf_config(path)):
            config, params = read_save_pretrained(path, dtype)
            return config, params, _gpt2_encoding_for(config, source)
        train_config, params, tokenizer = checkpoint.load(path)  # says what is missing if it is not a run either
        return train_config.model, cast_params(params, dtype), tokenizer
    if path.is_file():
        state_dict, hints = load_torch_checkpoint(path)
        layout = detect_layout(state_dict)
        if layout != "lecture" and "n_head" not in hints:
            raise UsageError(f"{source} is a {layout} state_dict, which does not record the number of heads; "
                             f"convert it first: python -m jaxgpt.convert {source} OUT_DIR --n_head=N"
                             f"{' --tokenizer=gpt2' if layout == 'hf' else ''}, then use OUT_DIR")
        config, params = from_torch_state_dict(state_dict, n_head=hints.get("n_head"), dtype=_jax_dtype(dtype))
        return config, params, _gpt2_encoding_for(config, source) if layout == "hf" else None
    raise UsageError(f"{source!r} is not pretrained weights: give {', '.join(HUB_MODELS)}, a jaxgpt run directory, "
                     "a save_pretrained directory or a .pt file")


def model_config(source: str) -> GPTConfig:
    """The model of `source`'s weights (anything `load` takes), reading no weights where the config says it: the
    hub's GPT-2 sizes, a run's config.json. A .pt file or a save_pretrained directory is read whole (`load`)."""
    if source in HUB_MODELS:
        n_layer, n_head, n_embd = HUB_SIZES[source]
        return GPTConfig(vocab_size=GPT2_VOCAB_SIZE, block_size=GPT2_CONTEXT, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=0.0, **LAYOUT_FIELDS["hf"], tie_embeddings=True)
    run = RunDir(Path(source).expanduser())
    if run.path.is_dir() and (run.has_checkpoints() or run.has_params()):
        return run.read_config().model
    return load(source)[0]


def run_model(weights: GPTConfig, requested: GPTConfig) -> GPTConfig:
    """The model of a training run started from `weights`: their architecture, with dropout and how to compute
    from `requested`, and requested.block_size if it is smaller (the position table is then cropped, as nanoGPT's
    crop_block_size does), else the weights'. The other fields of `requested` are not used."""
    chosen = {name: getattr(requested, name) for name in HOW_TO_COMPUTE}
    return dataclasses.replace(weights, block_size=min(requested.block_size, weights.block_size), **chosen)


def crop_block_size(params: dict, config: GPTConfig) -> dict:
    """`params` with the position table cut to `config.block_size` rows (the first ones): a shorter context."""
    if config.position != "learned" or config.model_type != "gpt":
        return params
    table = params["position_embedding_table"]
    return {**params, "position_embedding_table": {**table, "embedding": table["embedding"][: config.block_size]}}


def check_data_tokenizer(source: str, weights_tokenizer: Tokenizer | None, vocab_size: int, data: str,
                         data_tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer of a run or evaluation of `source`'s weights on `data`: the weights' own, which the data must
    have been tokenized with; or, for weights that carry none, the data's, if it has the model's vocab_size.
    UsageError saying what to run otherwise."""
    if weights_tokenizer is None:
        if data_tokenizer.vocab_size != vocab_size:
            raise UsageError(f"{source} has a vocabulary of {vocab_size} tokens but {data} holds "
                             f"{describe(data_tokenizer)}; use the data it was trained on, or convert it "
                             "with its tokenizer: python -m jaxgpt.convert MODEL.pt OUT_DIR --tokenizer=FILE")
        return data_tokenizer
    if weights_tokenizer.fingerprint() == data_tokenizer.fingerprint():
        return weights_tokenizer
    if weights_tokenizer.kind == "tiktoken":
        text = data if Path(data).is_file() else "TEXT"  # a text file, or the text a dataset was prepared from
        fix = (f"tokenize it with GPT-2's encoding: python -m jaxgpt.prepare {text} --tokenizer=gpt2 --out=DATA_DIR, "
               "then pass --data_path=DATA_DIR")
    else:
        fix = "use data tokenized with the weights' tokenizer (for a character model, the text it was trained on)"
    raise UsageError(f"{source} uses {describe(weights_tokenizer, data_tokenizer)} but {data} holds "
                     f"{describe(data_tokenizer, weights_tokenizer)}; {fix}")


DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # the weights' dtypes for inference


def _jax_dtype(dtype: str) -> Any:
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def cast_params(params: dict, dtype: str) -> dict:
    """`params` stored in `dtype`: "float32" or "bfloat16" (half the memory)."""
    return jax.tree_util.tree_map(lambda leaf: leaf.astype(_jax_dtype(dtype)), params)


def for_inference(config: GPTConfig, dtype: str) -> GPTConfig:
    """The model config that samples or scores with weights in `dtype`: with "bfloat16", the matmuls run in
    bfloat16 too (no float32 copy of a weight is made), while the residual stream, the norms, softmax and the loss
    stay float32. A model trained with a fused attention kernel (cudnn, splash) computes it with XLA's where the
    kernel cannot run."""
    _jax_dtype(dtype)
    backend = jax.default_backend()
    if (config.attention == "cudnn" and (dtype != "bfloat16" or backend != "gpu")
            or config.attention == "splash" and backend != "tpu"):
        config = dataclasses.replace(config, attention="dot_product")  # the same math, where the kernel cannot run
    return dataclasses.replace(config, dtype="bfloat16") if dtype == "bfloat16" else config
