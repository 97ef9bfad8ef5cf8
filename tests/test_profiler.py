"""The profiler window (`--profile=START:STOP`): a jax.profiler trace of those steps in the run directory."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import load_config
from jaxgpt.run.profiler import ProfileWindow
from jaxgpt.run.training import train
from jaxgpt.system.errors import UsageError


def test_a_profile_window_writes_a_trace_of_those_steps(tmp_path, small_text_file):
    config = dataclasses.replace(load_config("tiny"), data_path=str(small_text_file), out_dir=str(tmp_path / "run"),
                                 progress=False, sample_chars=0, max_iters=6, eval_interval=6, eval_iters=1,
                                 steps_per_call=1, profile="2:4")
    lines = []
    train(config, log=lines.append)
    profile = tmp_path / "run" / "profile"
    assert [line for line in lines if line.startswith("profile")] == [
        f"profile of steps 2 to 3 written to {profile} (tensorboard --logdir {profile}, or open its "
        "perfetto_trace.json.gz in ui.perfetto.dev)"]
    assert list(profile.glob("plugins/profile/*/*.xplane.pb"))  # TensorBoard's profile plugin reads these
    (perfetto,) = profile.glob("plugins/profile/*/perfetto_trace.json.gz")
    events = json.loads(gzip.decompress(perfetto.read_bytes()))
    names = {event.get("name", "") for event in events["traceEvents"]}
    assert sum("train_steps" in name for name in names) >= 1  # the compiled step ran inside the window
    assert "train" in names  # the step markers XProf's overview reads


@pytest.mark.parametrize("first_step, steps, starts", [(0, 2, False), (0, 3, True), (2, 1, True), (3, 5, True),
                                                       (4, 1, False), (8, 1, False)])
def test_a_call_is_traced_when_it_runs_a_step_of_the_window(tmp_path, monkeypatch, first_step, steps, starts):
    started = []
    monkeypatch.setattr("jax.profiler.start_trace", lambda *a, **k: started.append(a))
    ProfileWindow("2:4", tmp_path, print).before_call(first_step, steps)
    assert bool(started) == starts


@pytest.mark.parametrize("value", ["5", "4:2", "3:3", "a:b", "-1:2", ":4"])
def test_a_bad_window_is_one_line(value):
    with pytest.raises(UsageError, match=r"^profile must be empty or START:STOP, two step numbers with START < STOP"):
        parse_train_args([f"--profile={value}"])
