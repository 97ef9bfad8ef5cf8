"""The accelerator targets: each makes its devices without the hardware, with a known peak; unknown names and
missing libraries are one line."""

from __future__ import annotations

import importlib.util

import pytest

from jaxgpt.core.mfu import device_peak_flops
from jaxgpt.system import targets
from jaxgpt.system.errors import UsageError
from jaxgpt.system.targets import TARGETS, find_target, missing_library, target_devices

ISSUE_TARGETS = ["tpu-v4-8", "tpu-v5e-1", "tpu-v5e-4", "tpu-v5e-8", "tpu-v5p-8", "tpu-v6e-1", "tpu-v6e-8", "a100-1",
                 "a100-8", "h100-1", "h100-8"]


def installed(target: targets.Target):
    return pytest.mark.skipif(missing_library(target) is not None, reason=missing_library(target) or "")


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_makes_its_devices_without_the_hardware(name):
    target = TARGETS[name]
    if missing_library(target):
        pytest.skip(missing_library(target))
    devices = target_devices(target)
    assert len(devices) == target.devices
    assert {d.platform for d in devices} == {"tpu" if target.platform == "tpu" else "gpu"}
    # the time estimates take the peak from core/mfu.py's table, by the devices' kind: every target is in it
    assert device_peak_flops(devices[0], "bfloat16") > 0
    assert len({d.id for d in devices}) == len(devices)


def test_the_issue_targets_are_all_named():
    assert set(ISSUE_TARGETS) <= set(TARGETS)


@pytest.mark.parametrize("name", ["tpu-v5e-8x2", "h100-8x2", "tpu-v5e-16"])
def test_multi_slice_and_multi_host_targets(name):
    target = TARGETS[name]
    if missing_library(target):
        pytest.skip(missing_library(target))
    devices = target_devices(target)
    if target.platform == "tpu" and target.slices > 1:
        assert {d.slice_index for d in devices} == set(range(target.slices))
    assert len({d.process_index for d in devices}) > 1  # more than one host


def test_an_unknown_target_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown target 'tpu-v9'; use one of tpu-v4-8, .*h100-8"):
        find_target("tpu-v9")


def test_a_missing_library_is_one_line_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("libtpu", "jax_plugins.xla_cuda12") else real(name, *a))
    with pytest.raises(UsageError, match=r"tpu-v5e-1 needs libtpu .*: pip install 'jaxgpt\[tpu\]'"):
        target_devices(find_target("tpu-v5e-1"))
    with pytest.raises(UsageError, match=r"h100-1 needs JAX's CUDA plugin .*: pip install 'jaxgpt\[cuda\]'"):
        target_devices(find_target("h100-1"))


@installed(TARGETS["h100-1"])
def test_the_gpu_description_carries_the_installed_cudnn_and_cuda_versions():
    text = targets._gpu_target_config(find_target("h100-1"))
    major = targets._package_version("nvidia-cudnn-cu12")[0]
    assert f"dnn_version_info {{ major: {major} " in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text and "runtime_version" in text
