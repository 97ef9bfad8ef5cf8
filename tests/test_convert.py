"""Weight conversion: exact round trips for each layout, clear errors, and the `python -m jaxgpt.convert` CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from torch_models import layout_config, random_params, torch_model

from jaxgpt.cli import run_cli
from jaxgpt.convert import main
from jaxgpt.core.config import GPTConfig
from jaxgpt.core.losses import cross_entropy
from jaxgpt.core.model import GPT
from jaxgpt.core.sampling import generate
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.store import checkpoint
from jaxgpt.system.errors import UsageError
from jaxgpt.weights.convert import detect_layout, from_torch_state_dict, load_torch_checkpoint, to_torch_state_dict

SIZES = {"vocab_size": 13, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 8, "dropout": 0.0}
VARIANTS = [("lecture", {}), ("nanogpt", {"bias": True}), ("nanogpt", {"bias": False}),
            ("hf", {"tie_embeddings": True}), ("hf", {"tie_embeddings": False})]


def flat(params) -> dict[str, np.ndarray]:
    return {path: np.asarray(leaf) for path, leaf in traverse_util.flatten_dict(params, sep="/").items()}


def perturbed_state_dict(layout: str, seed: int = 0, **switches) -> tuple[dict, object]:
    """A torch model's state_dict with every parameter randomised (biases and LayerNorms are not left at init)."""
    torch.manual_seed(seed)
    config = layout_config(layout, **switches, **SIZES)
    model = torch_model(config, layout)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.state_dict(), config


@pytest.mark.parametrize(("layout", "switches"), VARIANTS)
def test_torch_to_jax_to_torch_is_exact(layout, switches):
    state_dict, config = perturbed_state_dict(layout, **switches)
    assert detect_layout(state_dict) == layout
    inferred, params = from_torch_state_dict(state_dict, n_head=None if layout == "lecture" else config.n_head)
    assert inferred == config
    back = to_torch_state_dict(params, inferred, layout)
    assert sorted(back) == sorted(state_dict)
    for key, tensor in state_dict.items():
        assert torch.equal(back[key], tensor), key
    torch_model(config, layout).load_state_dict(back, strict=True)


@pytest.mark.parametrize(("layout", "switches"), VARIANTS)
def test_jax_to_torch_to_jax_is_exact(layout, switches):
    config = layout_config(layout, **switches, **SIZES)
    params = random_params(config, np.random.default_rng(0), scale=0.5)
    inferred, back = from_torch_state_dict(to_torch_state_dict(params, config, layout), n_head=config.n_head)
    assert inferred == config
    original, converted = flat(params), flat(back)
    assert original.keys() == converted.keys()
    for path, leaf in original.items():
        np.testing.assert_array_equal(converted[path], leaf, err_msg=path)


def test_lecture_head_h_fills_kernel_columns_of_head_h():
    state_dict, config = perturbed_state_dict("lecture")
    _, params = from_torch_state_dict(state_dict)
    hs = config.head_size
    for h in range(config.n_head):
        for name in ("query", "key", "value"):
            kernel = np.asarray(params["blocks_1"]["sa"][name]["kernel"])  # (C, C) = (in, out)
            np.testing.assert_array_equal(kernel[:, h * hs:(h + 1) * hs],
                                          state_dict[f"blocks.1.sa.heads.{h}.{name}.weight"].numpy().T)


@pytest.mark.parametrize("layout", ["nanogpt", "hf"])
def test_fused_c_attn_splits_into_query_key_value(layout):
    state_dict, config = perturbed_state_dict(layout)
    _, params = from_torch_state_dict(state_dict, n_head=config.n_head)
    fused = state_dict["transformer.h.0.attn.c_attn.weight"].numpy()
    fused = fused.T if layout == "nanogpt" else fused  # as (in, out) = (C, 3C)
    C = config.n_embd
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(params["blocks_0"]["sa"][name]["kernel"], fused[:, i * C:(i + 1) * C])


def test_accepts_torch_compile_prefix_and_mask_buffers():
    state_dict, config = perturbed_state_dict("nanogpt")
    _, expected = from_torch_state_dict(state_dict, n_head=2)
    noisy = {f"_orig_mod.{key}": value for key, value in state_dict.items()}
    noisy["_orig_mod.transformer.h.0.attn.bias"] = torch.ones(1, 1, 8, 8).tril()  # nanoGPT without flash attention
    noisy["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)  # older transformers
    _, params = from_torch_state_dict(noisy, n_head=2)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, expected))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("blocks.1.ffwd.net.2.bias"), "missing blocks.1.ffwd.net.2.bias"),
        (lambda sd: sd.update({"blocks.0.sa.gate.weight": torch.zeros(8, 8)}),
         "unexpected key blocks.0.sa.gate.weight"),
        (lambda sd: sd.update({"blocks.0.ffwd.net.0.weight": torch.zeros(30, 8)}),
         r"blocks.0.ffwd.net.0.weight has shape \(30, 8\), expected \(32, 8\)"),
        (lambda sd: sd.update({"blocks.1.sa.heads.0.key.weight": torch.zeros(3, 8)}),
         r"blocks.1.sa.heads.0.key.weight has shape \(3, 8\), expected \(4, 8\)"),
        (lambda sd: sd.pop("position_embedding_table.weight"), "missing position_embedding_table.weight"),
    ],
)
def test_bad_lecture_state_dict_names_the_key(edit, message):
    state_dict, _ = perturbed_state_dict("lecture")
    edit(state_dict)
    with pytest.raises(UsageError, match=message):
        from_torch_state_dict(state_dict)


def test_unknown_layout_and_ambiguous_inputs():
    with pytest.raises(UsageError, match="unknown checkpoint layout.*found keys encoder.weight"):
        from_torch_state_dict({"encoder.weight": torch.zeros(2, 2)})
    state_dict, _ = perturbed_state_dict("nanogpt")
    with pytest.raises(UsageError, match="does not record the number of heads; pass n_head"):
        from_torch_state_dict(state_dict)
    with pytest.raises(UsageError, match=r"n_embd \(8\) must be divisible by n_head \(3\)"):
        from_torch_state_dict(state_dict, n_head=3)
    state_dict["transformer.h.0.attn.c_attn.weight"] = torch.zeros(8, 8)
    with pytest.raises(UsageError, match=r"c_attn.weight has shape \(8, 8\); expected \(24, 8\) \(nanoGPT\)"):
        from_torch_state_dict(state_dict, n_head=2)
    lecture, _ = perturbed_state_dict("lecture")
    with pytest.raises(UsageError, match="n_head=4 was given but the lecture state_dict has 2 heads"):
        from_torch_state_dict(lecture, n_head=4)
    headless = {key: value for key, value in lecture.items() if not key.startswith("blocks.0.")}
    with pytest.raises(UsageError, match=r"the lecture state_dict has no blocks.0.sa.heads.\* keys \(2 blocks found\): "
                                         "it is not a whole model"):
        from_torch_state_dict(headless)


def test_files_that_are_not_state_dicts_are_one_plain_line(tmp_path):
    """No advice to unpickle with weights_only=False, no terminal colours."""
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    for name, reason in (("garbage.pt", r"not a file torch.save wrote \(\w+"),
                         ("module.pt", "it holds a pickled torch.nn.modules.linear.Linear, which jaxgpt does not "
                                       r"unpickle \(it could run code\)")):
        with pytest.raises(UsageError, match=f"cannot read .*{name} as a PyTorch checkpoint: {reason}") as err:
            load_torch_checkpoint(tmp_path / name)
        message = str(err.value)
        assert "\n" not in message and "\x1b" not in message and "weights_only" not in message


def test_to_torch_refuses_what_the_layout_cannot_express():
    config = layout_config("hf", **SIZES)
    params = random_params(config, np.random.default_rng(0), scale=0.1)
    with pytest.raises(UsageError, match=r"the lecture layout needs activation='relu', tie_embeddings=False"):
        to_torch_state_dict(params, config, "lecture")
    with pytest.raises(UsageError, match="layout must be one of lecture, nanogpt, hf"):
        to_torch_state_dict(params, config, "gpt3")
    bigram = GPTConfig(vocab_size=5, model_type="bigram")
    with pytest.raises(UsageError, match="^the lecture layout needs model_type='gpt'; the config has "
                                         "model_type='bigram'$"):
        to_torch_state_dict({"token_embedding_table": {"embedding": np.zeros((5, 5))}}, bigram, "lecture")
    del params["blocks_1"]["ln2"]
    with pytest.raises(UsageError, match="the params lack blocks_1/ln2/bias"):
        to_torch_state_dict(params, config, "hf")


def test_importing_jaxgpt_does_not_import_torch():
    code = "import sys, jaxgpt, jaxgpt.convert, jaxgpt.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------
# the command line


def char_state_dict(tokenizer: CharTokenizer, layout: str = "lecture") -> tuple[dict, object]:
    """A freshly initialised model's state_dict whose vocabulary is the tokenizer's."""
    torch.manual_seed(0)
    config = layout_config(layout, **{**SIZES, "vocab_size": tokenizer.vocab_size})
    return torch_model(config, layout).state_dict(), config


def test_cli_writes_a_run_directory_that_loads(tmp_path, small_text_file, capsys):
    tokenizer = CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8"))
    state_dict, config = char_state_dict(tokenizer)
    torch.save(state_dict, tmp_path / "model.pt")
    main([str(tmp_path / "model.pt"), str(tmp_path / "run"), "--tokenizer", str(small_text_file)])
    assert "converted lecture checkpoint" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "params", "tokenizer.json"]
    train_config, params, loaded_tokenizer = checkpoint.load(tmp_path / "run")
    assert train_config.model == config and train_config.data_path == str(small_text_file)
    assert loaded_tokenizer == tokenizer
    _, expected = from_torch_state_dict(state_dict)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, expected))


def test_cli_reads_a_nanogpt_ckpt_with_model_args(tmp_path, small_text_file):
    tokenizer = CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8"))
    tokenizer.save(tmp_path / "tokenizer.json")
    state_dict, config = char_state_dict(tokenizer, layout="nanogpt")
    model_args = {"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 8, "bias": True,
                  "vocab_size": tokenizer.vocab_size, "dropout": 0.1}
    ckpt = {"model": {f"_orig_mod.{k}": v for k, v in state_dict.items()}, "model_args": model_args, "iter_num": 5}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    main([str(tmp_path / "ckpt.pt"), str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tokenizer.json")])
    train_config, _, loaded_tokenizer = checkpoint.load(tmp_path / "run")
    assert train_config.model.n_head == 2 and train_config.model.dropout == 0.1
    assert train_config.model.activation == "gelu" and train_config.model.tie_embeddings
    assert loaded_tokenizer == tokenizer


def test_cli_default_tokenizer_comes_from_the_dataset(tmp_path, small_text_file, monkeypatch):
    monkeypatch.setenv("JAXGPT_DATA", str(small_text_file))
    tokenizer = CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8"))
    torch.save(char_state_dict(tokenizer)[0], tmp_path / "model.pt")
    main([str(tmp_path / "model.pt"), str(tmp_path / "run")])
    assert json.loads((tmp_path / "run" / "tokenizer.json").read_text(encoding="utf-8"))["chars"] == "".join(
        tokenizer.chars)


def run_convert(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path, small_text_file, capsys):
    tokenizer = CharTokenizer.from_text("abc")  # 3 characters; the model has 13
    tokenizer.save(tmp_path / "tokenizer.json")
    torch.save(perturbed_state_dict("lecture")[0], tmp_path / "model.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole module, not a state_dict
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    nan_state_dict = perturbed_state_dict("lecture")[0]
    nan_state_dict["blocks.0.ffwd.net.0.weight"][0, 0] = float("nan")
    torch.save(nan_state_dict, tmp_path / "nan.pt")
    run = tmp_path / "run"
    cases = [
        ([tmp_path / "missing.pt", run], "missing.pt is not a file"),
        ([tmp_path / "junk.pt", run], "cannot read .*junk.pt as a PyTorch checkpoint"),
        ([tmp_path / "module.pt", run], "cannot read .*module.pt as a PyTorch checkpoint"),
        ([tmp_path / "list.pt", run], "holds a dict, not a state_dict"),
        ([tmp_path / "model.pt", run, "--tokenizer", tmp_path / "tokenizer.json"],
         "the tokenizer has 3 tokens but the model's vocabulary has 13 tokens"),
        ([tmp_path / "model.pt", run, "--tokenizer", tmp_path / "nope.txt"], "--tokenizer .*nope.txt is not a file"),
        ([tmp_path / "model.pt", run, "--n_head", "4"], "n_head=4 was given but the lecture state_dict has 2 heads"),
        ([tmp_path / "nan.pt", run], "blocks.0.ffwd.net.0.weight holds NaN or infinite values"),
    ]
    for argv, message in cases:
        code, err = run_convert(argv, capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), err
        assert not run.exists()
    (run / "old").mkdir(parents=True)
    state_dict, _ = char_state_dict(CharTokenizer.from_text(small_text_file.read_text(encoding="utf-8")))
    torch.save(state_dict, tmp_path / "model.pt")
    code, err = run_convert([tmp_path / "model.pt", run, "--tokenizer", small_text_file], capsys)
    assert code == 2 and "is not empty; choose another OUT_DIR or pass --overwrite" in err
    assert [p.name for p in run.iterdir()] == ["old"]
    run_cli(main, [str(tmp_path / "model.pt"), str(run), "--tokenizer", str(small_text_file), "--overwrite"])
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "old", "params", "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []  # no staging folder left


# ---------------------------------------------------------------------------------------------------------------
# end to end: a lecture model trained in PyTorch samples Shakespeare in jaxgpt

TRAIN = {"steps": 500, "batch_size": 16, "learning_rate": 1e-3}  # ~5 s on one CPU thread


def train_lecture_model(config, train: torch.Tensor) -> tuple[torch.nn.Module, list[float]]:
    """The lecture's training loop (get_batch, AdamW, cross-entropy) for a few hundred steps."""
    torch.manual_seed(1337)
    model = torch_model(config, "lecture")
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN["learning_rate"])
    losses = []
    for _ in range(TRAIN["steps"]):
        x, y = lecture_batch(train, config.block_size)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def lecture_batch(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block_size, (TRAIN["batch_size"],))
    x = torch.stack([data[i:i + block_size] for i in ix])
    return x, torch.stack([data[i + 1:i + block_size + 1] for i in ix])


def bigram_nll(tokens: np.ndarray, corpus: np.ndarray, vocab_size: int) -> float:
    """Mean negative log-likelihood of `tokens` under the corpus's character bigrams (add-one smoothed)."""
    counts = np.ones((vocab_size, vocab_size))
    np.add.at(counts, (corpus[:-1], corpus[1:]), 1)
    log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-log_probs[tokens[:-1], tokens[1:]].mean())


def test_lecture_checkpoint_trained_in_pytorch_samples_shakespeare(tmp_path, shakespeare_path, shakespeare_text):
    tokenizer = CharTokenizer.from_text(shakespeare_text)
    data = torch.tensor(tokenizer.encode(shakespeare_text), dtype=torch.long)
    train, val = data[:int(0.9 * len(data))], data[int(0.9 * len(data)):]
    config = layout_config("lecture", vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64,
                           dropout=0.0)
    model, losses = train_lecture_model(config, train)
    assert np.mean(losses[-20:]) < losses[0] - 1.5  # 4.19 -> 2.25 measured
    torch.save(model.state_dict(), tmp_path / "model.pt")

    convert = [sys.executable, "-m", "jaxgpt.convert", tmp_path / "model.pt", tmp_path / "run",
               "--tokenizer", shakespeare_path]
    result = subprocess.run(convert, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    train_config, params, loaded_tokenizer = checkpoint.load(tmp_path / "run")
    assert train_config.model == config and loaded_tokenizer == tokenizer

    prompt = jnp.asarray([tokenizer.encode("\n")], jnp.int32)
    tokens = np.asarray(generate(config, params, prompt, 1000, jax.random.key(0)))  # (1, 1001)
    sample = tokenizer.decode(tokens[0, 1:])
    assert bigram_nll(tokens[0], data.numpy(), tokenizer.vocab_size) < 3.5, sample  # 2.7-2.8 measured; text 2.5

    context = tokens[:, -config.block_size:]  # the next-token distributions along the sample's end
    jax_probs = jax.nn.softmax(GPT(config).apply({"params": params}, context), axis=-1)
    with torch.no_grad():
        torch_probs = torch.softmax(model(torch.tensor(context, dtype=torch.long))[0], dim=-1)
    np.testing.assert_allclose(jax_probs, torch_probs.numpy(), atol=1e-5)

    torch.manual_seed(0)
    x, y = lecture_batch(val, config.block_size)
    with torch.no_grad():
        torch_val_loss = model(x, y)[1].item()
    jax_val_loss = float(cross_entropy(GPT(config).apply({"params": params}, jnp.asarray(x.numpy())), y.numpy()))
    assert abs(jax_val_loss - torch_val_loss) < 1e-4 and jax_val_loss < 2.6  # chance: ln 65 = 4.17
