"""A run's programs compiled for TPU and GPU targets on this CPU-only machine (jaxgpt.run.compile_check), and the
commands' --compile_for."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import pytest

from jaxgpt import eval as eval_command
from jaxgpt import load_config, sample, train
from jaxgpt.cli import run_cli
from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import INIT_STREAM, stream_key
from jaxgpt.core.model import build_model, init_params
from jaxgpt.core.optim import make_optimizer
from jaxgpt.run import compile_check
from jaxgpt.run.compile_check import check_sample, check_train
from jaxgpt.run.step import TrainState, make_train_step
from jaxgpt.run.training import make_batches
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import sharding, targets
from jaxgpt.system.errors import UsageError
from jaxgpt.system.targets import TARGETS, find_target, missing_library
from jaxgpt.weights import pretrained

TPU, GPU = TARGETS["tpu-v5e-1"], TARGETS["h100-1"]
needs_tpu = pytest.mark.skipif(missing_library(TPU) is not None, reason=str(missing_library(TPU)))
needs_gpu = pytest.mark.skipif(missing_library(GPU) is not None, reason=str(missing_library(GPU)))


def tiny(data: str, **changes) -> TrainConfig:
    config = dataclasses.replace(load_config("tiny"), data_path=str(data))
    model = {name: changes.pop(name) for name in list(changes) if name in GPTFIELDS}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model), **changes)


GPTFIELDS = {field.name for field in dataclasses.fields(load_config("tiny").model)}


@pytest.mark.parametrize("target,fsdp", [pytest.param("tpu-v5e-1", 1, marks=needs_tpu),
                                         pytest.param("tpu-v5e-4", 2, marks=needs_tpu),
                                         pytest.param("h100-1", 1, marks=needs_gpu)])
def test_tiny_compiles_its_train_step_evaluation_sampler_and_inspect_page(shakespeare_path, target, fsdp):
    report = check_train(tiny(shakespeare_path, fsdp=fsdp), find_target(target), log=lambda _: None)
    assert [p.name.split(" (")[0] for p in report.programs] == ["train step", "evaluation", "sampler", "inspect page"]
    assert report.fit_problem() is None
    assert all(p.arguments > 0 and p.temporaries >= 0 for p in report.programs)
    assert report.step_seconds_bound() > 0
    assert report.seconds_at_mfu() >= report.steps * report.step_seconds_bound()  # never below the bound
    table = report.format()
    assert f"compiled for {target}" in table and "compiled, not run" in table



@needs_gpu
def test_the_inspect_page_is_compiled_where_the_run_writes_one(shakespeare_path):
    """A run writes inspect.html unless --inspect=false, and never on several hosts (its arrays would span them);
    its forward pass keeps every attention weight, the program that needs most at long contexts with a fused
    attention (benchmarks/RESULTS.md, "On an H200")."""
    def names(config, target):
        return [p.name.split(" (")[0] for p in check_train(config, find_target(target), log=lambda _: None).programs]

    assert "inspect page" in names(tiny(shakespeare_path), "h100-1")
    assert "inspect page" not in names(tiny(shakespeare_path, inspect=False), "h100-1")
    assert "inspect page" not in names(tiny(shakespeare_path, batch_size=16), "h100-8x2")  # 2 hosts
    report = check_train(tiny(shakespeare_path, block_size=256), find_target("h100-1"), log=lambda _: None)
    page = next(p for p in report.programs if p.name == "inspect page")
    model = load_config("tiny").model
    assert page.outputs >= 4 * model.n_layer * model.n_head * 256 * 256 * 4  # 4 windows' (T, T) float32 weights

@needs_tpu
def test_the_memory_table_is_the_compiled_programs_memory_analysis(shakespeare_path):
    """The report's train step is the one a run builds (make_train_step, its batches, its placement), compiled
    again here independently: the same memory, to the byte, and the table prints its sum."""
    config = tiny(shakespeare_path, steps_per_call=1, sample_chars=0)
    report = check_train(config, TPU, log=lambda _: None)
    resolved = config.for_vocab(65, backend="tpu")
    mesh = sharding.make_mesh(1, targets.target_devices(TPU))
    tx, model = make_optimizer(resolved), build_model(resolved.model)
    abstract = jax.eval_shape(lambda: TrainState.fresh(init_params(resolved.model, stream_key(0, INIT_STREAM)), tx))
    placement = sharding.Placement.for_state(mesh, abstract)
    state = compile_check._specs(abstract, placement.state)
    from jaxgpt.data.text import load_dataset

    batches = make_batches(resolved, placement, load_dataset(shakespeare_path, resolved.block_size))
    compiled = make_train_step(resolved, model, tx, placement, batches, 1).lower(
        state, batches.step_input_spec(1)).compile()
    memory = compiled.memory_analysis()
    step = report.train_step
    assert (step.arguments, step.outputs, step.aliased, step.temporaries, step.code) == (
        memory.argument_size_in_bytes, memory.output_size_in_bytes, memory.alias_size_in_bytes,
        memory.temp_size_in_bytes, memory.generated_code_size_in_bytes)
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    assert step.peak_bytes == peak
    assert compile_check.format_bytes(peak) in report.format()


@needs_tpu
def test_compiled_flops_agree_with_jaxgpts_count(shakespeare_path):
    """XLA counts every operation; jaxgpt.mfu counts the matmuls (6N + 12LCT). Without dropout (whose Threefry
    masks XLA counts as FLOPs: +48% for tiny) and at a width where matmuls dominate they agree within 10%. The
    compiler counts a loop's body once: K steps per call report one step."""
    config = tiny(shakespeare_path, dropout=0.0, n_embd=128, n_head=4, sample_chars=0)
    one = check_train(dataclasses.replace(config, steps_per_call=1), TPU, log=lambda _: None)
    ten = check_train(dataclasses.replace(config, steps_per_call=10), TPU, log=lambda _: None)
    # + the loop's own counter, and what XLA simplifies differently inside a loop body (the health numbers' reductions:
    # 0.25% at this size)
    assert one.train_step.flops == pytest.approx(ten.train_step.flops, rel=1e-2)
    ratio = one.flops_per_step_per_device() / one.model_flops_per_step
    assert 0.9 <= ratio <= 1.1, ratio
    # the GPU compiler gives no FLOPs: its report uses jaxgpt's count, which the TPU figure just checked
    if missing_library(GPU) is None:
        gpu = check_train(dataclasses.replace(config, steps_per_call=1), GPU, log=lambda _: None)
        assert gpu.train_step.flops is None
        assert gpu.flops_per_step_per_device() == gpu.model_flops_per_step
        assert abs(gpu.flops_per_step_per_device() / one.flops_per_step_per_device() - 1) <= 0.1


@needs_tpu
def test_fsdp_shrinks_the_state_each_chip_holds(shakespeare_path):
    config = tiny(shakespeare_path, n_embd=128, n_head=4, sample_chars=0, batch_size=8)
    target = find_target("tpu-v5e-4")
    whole = check_train(config, target, log=lambda _: None)
    split = check_train(dataclasses.replace(config, fsdp=4), target, log=lambda _: None)
    # matrices split four ways; vectors (biases, norms) and step counters stay whole
    assert split.params_bytes < 0.3 * whole.params_bytes
    assert split.optimizer_bytes < 0.3 * whole.optimizer_bytes
    assert split.train_step.arguments < whole.train_step.arguments


@needs_gpu
def test_cudnn_attention_is_the_fused_kernel_in_the_gpu_program(shakespeare_path):
    config = tiny(shakespeare_path, attention="cudnn", dropout=0.0, sample_chars=0)
    report = check_train(config, GPU, log=lambda _: None)
    assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= set(report.train_step.kernels)
    # and in the program XLA:GPU compiled, not only in the one it was given
    resolved = config.for_vocab(65, backend="gpu")
    model = build_model(resolved.model)
    x = jax.ShapeDtypeStruct((8, 16), jax.numpy.int32)
    params = jax.eval_shape(lambda: init_params(resolved.model, jax.random.key(0)))
    mesh = sharding.make_mesh(1, targets.target_devices(GPU))
    where = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    lowered = jax.jit(lambda p, x: model.apply({"params": p}, x).sum()).lower(
        compile_check._specs(params, where), compile_check._spec(x, where))
    assert "__cudnn$fmhaSoftmax" in lowered.compile().as_text()
    assert "__cudnn$fmhaSoftmax" in report.programs[1].kernels  # the evaluation's forward
    plain = check_train(tiny(shakespeare_path, dropout=0.0), GPU, log=lambda _: None)
    assert not plain.train_step.kernels


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


@needs_tpu
def test_train_compile_for_prints_the_table_and_exits_0(shakespeare_path):
    result = _cli(["-m", "jaxgpt.train", "--config=tiny", f"--data_path={shakespeare_path}",
                   "--compile_for=tpu-v5e-4", "--fsdp=2"])
    assert result.returncode == 0, result.stderr
    assert "train: compiled for tpu-v5e-4 (4 x TPU v5e, 16.00 GiB each); compiled, not run" in result.stdout
    for row in ("train step (x10)", "evaluation", "sampler", "inspect page", "step time >= "):
        assert row in result.stdout
    assert result.stderr == ""


@needs_tpu
def test_a_program_the_tpu_compiler_refuses_as_too_big_is_one_line_and_exit_1(capsys, shakespeare_path):
    """libtpu refuses to compile what cannot fit (RESOURCE_EXHAUSTED): the same one line as a program that
    compiles but does not fit, with the compiler's figures and the flags to change."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config=tiny", f"--data_path={shakespeare_path}", "--compile_for=tpu-v5e-1",
                             "--batch_size=1048576", "--steps_per_call=1", "--sample_chars=0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: on tpu-v5e-1 the train step (x1) does not fit a device (the compiler: Ran out of "
                          "memory on HBM, the total memory required for HLO temporaries (")
    assert err.endswith("; try --batch_size=524288 --grad_accum=2 (the same tokens per step, half the "
                        "activations)\n") and len(err.splitlines()) == 1


@needs_tpu
def test_a_second_compile_for_finds_nothing_of_the_first_in_jaxs_cache(shakespeare_path, tmp_path, monkeypatch):
    """Programs for absent devices are kept out of JAX's persistent cache: reading one back fails with a warning."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    for _ in range(2):
        result = _cli(["-m", "jaxgpt.train", "--config=tiny", f"--data_path={shakespeare_path}",
                       "--compile_for=tpu-v5e-1", "--sample_chars=0"])
        assert result.returncode == 0 and result.stderr == "", result.stderr
    assert not any(path.name.startswith("jit_train_steps") for path in (tmp_path / "cache").glob("*"))


@needs_tpu
def test_fsdp_inside_each_slice_of_a_two_slice_tpu(shakespeare_path):
    """tpu-v5e-8x2: FSDP over a slice's 8 chips, the data axis across the 2 slices (their slow link carries only the
    gradients' reduction); an --fsdp wider than a slice is one line."""
    report = check_train(tiny(shakespeare_path, fsdp=8, batch_size=16, sample_chars=0), find_target("tpu-v5e-8x2"),
                         log=lambda _: None)
    assert report.fit_problem() is None and report.target.devices == 16
    mesh = sharding.make_mesh(8, targets.target_devices(find_target("tpu-v5e-8x2")))
    assert [{device.slice_index for device in row} for row in mesh.devices] == [{0}, {1}]
    with pytest.raises(UsageError, match="--fsdp=16 does not divide the 8 devices of one of the 2 slices"):
        sharding.make_mesh(16, mesh.devices.flatten().tolist())


def test_an_unknown_target_is_one_line_and_exit_2(shakespeare_path):
    result = _cli(["-m", "jaxgpt.train", "--config=tiny", "--compile_for=tpu-v9"])
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown target 'tpu-v9'; use one of tpu-v4-8,")
    assert len(result.stderr.splitlines()) == 1


def test_a_missing_library_is_one_line_and_exit_2(monkeypatch, capsys, shakespeare_path):
    monkeypatch.setattr(targets, "missing_library", lambda target: f"compiling for {target.name} needs libtpu "
                        "(about 680 MB): pip install 'jaxgpt[tpu]'")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config=tiny", f"--data_path={shakespeare_path}", "--compile_for=tpu-v5e-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: compiling for tpu-v5e-1 needs libtpu (about 680 MB): "
                                       "pip install 'jaxgpt[tpu]'\n")


@needs_tpu
def test_a_program_that_does_not_fit_exits_1_saying_what_to_change(monkeypatch, capsys, shakespeare_path):
    small = dataclasses.replace(TPU, chip=dataclasses.replace(TPU.chip, memory=2**20))  # a 1 MiB chip
    monkeypatch.setitem(TARGETS, "tpu-v5e-1", small)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config=tiny", f"--data_path={shakespeare_path}", "--compile_for=tpu-v5e-1",
                             "--sample_chars=0", "--inspect=false"])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert "train step (x10)" in out
    assert err.startswith("error: on tpu-v5e-1 the train step (x10) (and evaluation) needs ")
    assert "--batch_size=4 --grad_accum=2" in err and len(err.splitlines()) == 1


@needs_gpu
def test_sampling_gpt2_compiles_for_an_h100_without_its_weights(capsys):
    run_cli(sample.main, ["--init_from=gpt2", "--compile_for=h100-1", "--max_new_tokens=64", "--num_samples=2"])
    out = capsys.readouterr().out
    assert "sample: compiled for h100-1" in out and "sampler" in out
    gpt2 = pretrained.model_config("gpt2")
    assert f"params {compile_check.format_bytes(124_439_808 * 4)}" in out  # float32 weights, one device
    assert gpt2.n_layer == 12 and gpt2.vocab_size == 50257


@needs_tpu
def test_scoring_gpt2_compiles_for_a_tpu_slice_without_its_weights(shakespeare_path, capsys):
    """`eval --compile_for`: GPT-2's weights replicated on each of the 4 chips, the batches split over them."""
    run_cli(eval_command.main, ["gpt2", f"--data_path={shakespeare_path}", "--compile_for=tpu-v5e-4",
                                "--block_size=64", "--batch_size=4"])
    out = capsys.readouterr().out
    assert "eval: compiled for tpu-v5e-4 (4 x" in out and "evaluation" in out
    assert f"params {compile_check.format_bytes(124_439_808 * 4)}" in out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_command.main, ["gpt2", f"--data_path={shakespeare_path}", "--compile_for=tpu-v5e-4",
                                    "--block_size=2048"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: block_size must be in [1, 1024] (the model's context), got 2048\n"


@needs_tpu
def test_sampling_a_lecture_run_compiles_for_a_tpu(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(load_config("lecture").for_vocab(65))
    report = check_sample(run.read_config().model, TPU, dtype="bfloat16", prompt_len=1, num_samples=3,
                          max_new_tokens=500, cache="recompute")
    assert report.fit_problem() is None and report.programs[0].name == "sampler"
    assert report.params_bytes == pytest.approx(10_788_929 * 2, rel=0.01)  # bfloat16 weights


def test_the_gpt2_sizes_need_no_download():
    """The hub table's GPT-2 (124M) has GPT-2's parameter count (wte, wpe, 12 blocks, ln_f; the head tied)."""
    from jaxgpt.core.model import count_params

    config = pretrained.model_config("gpt2")
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert count_params(params) == 124_439_808
