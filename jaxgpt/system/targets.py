"""Accelerators to compile for on any machine: named TPU slices and GPU servers, their devices made by XLA's own
compilers without the hardware (`jax.experimental.topologies`), and each chip's memory, peak and bandwidth.

A TPU target needs libtpu (`pip install 'jaxgpt[tpu]'`), a GPU target JAX's CUDA plugin and CUDA's libraries
(`pip install 'jaxgpt[cuda]'`). The process must run JAX on the CPU (JAX_PLATFORMS=cpu): the devices made here
exist only to compile for. `target_devices` sets (where unset) the environment variables the plugins need to start
without their hardware (`deviceless_environment`), which only a process that runs JAX on the CPU reads.
The figures per chip and where they come from are in docs/accelerators.md.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from typing import Literal

import jax

from jaxgpt.system.errors import UsageError

GiB = 2**30

TPU_INSTALL = "pip install 'jaxgpt[tpu]'"
CUDA_INSTALL = "pip install 'jaxgpt[cuda]'"


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: what the memory and time estimates need (its peak FLOP/s is jaxgpt.core.mfu's, by the
    devices' kind). `memory` is per device (a TPU chip, or a GPU); `usable` is the share of it JAX gives a program
    by default (its GPU allocator takes 75% at start-up)."""

    name: str
    memory: int  # bytes of HBM per device
    bandwidth: float  # HBM bytes/s per device
    usable: float = 1.0


@dataclasses.dataclass(frozen=True)
class Target:
    """A named slice or server: `platform` ("tpu", "gpu"), the chip, how many devices, and how to describe it to
    the topology API (`topology` for TPU, e.g. "v5e:2x4"; for GPU, "slices x hosts x devices per host")."""

    name: str
    platform: Literal["tpu", "gpu"]
    chip: Chip
    devices: int
    topology: str
    chips_per_host: tuple[int, int, int] = (1, 1, 1)  # TPU: the chips one host holds
    chip_config: str = "default"  # TPU: "megacore" where two TensorCores act as one device (v4)
    slices: int = 1
    gpu_spec: str = ""  # GPU: the device description (a GpuTargetConfig text proto, without the versions)


# Per chip, from the vendors' pages (docs/accelerators.md lists the sources).
TPU_V4 = Chip("TPU v4", 32 * GiB, 1228e9)
TPU_V5E = Chip("TPU v5e", 16 * GiB, 819e9)
TPU_V5P = Chip("TPU v5p", 95 * GiB, 2765e9)
TPU_V6E = Chip("TPU v6e", 32 * GiB, 1640e9)
A100 = Chip("A100 SXM4 80GB", 80 * GiB, 2039e9, usable=0.75)
H100 = Chip("H100 SXM5 80GB", 80 * GiB, 3352e9, usable=0.75)
H200 = Chip("H200 SXM 141GB", 141 * 10**9, 4800e9, usable=0.75)

# What XLA's GPU compiler asks of a device (stream_executor's DeviceDescription), from NVIDIA's data sheets and
# the CUDA programming guide's table of compute capabilities.
_A100_SPEC = """
gpu_device_info {
  cuda_compute_capability { major: 8 minor: 0 }
  threads_per_block_limit: 1024  threads_per_warp: 32
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 166912  shared_memory_per_core: 167936
  threads_per_core_limit: 2048  core_count: 108  fpus_per_core: 64
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  memory_bandwidth: 2039000000000  l2_cache_size: 41943040  clock_rate_ghz: 1.41  device_memory_size: 85899345920
}
device_description_str: "NVIDIA A100-SXM4-80GB"
"""
_HOPPER_SPEC = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  threads_per_block_limit: 1024  threads_per_warp: 32
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 232448  shared_memory_per_core: 233472
  threads_per_core_limit: 2048  core_count: 132  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  memory_bandwidth: %(bandwidth)d  l2_cache_size: 52428800  clock_rate_ghz: 1.98  device_memory_size: %(memory)d
}
device_description_str: "%(name)s"
"""
_H100_SPEC = _HOPPER_SPEC % {"bandwidth": 3352e9, "memory": 80 * GiB, "name": "NVIDIA H100 80GB HBM3"}
_H200_SPEC = _HOPPER_SPEC % {"bandwidth": 4800e9, "memory": 141 * 10**9, "name": "NVIDIA H200"}


def _tpu(name: str, chip: Chip, topology: str, per_host: tuple[int, int, int], devices: int, slices: int = 1,
         chip_config: str = "default") -> Target:
    return Target(name, "tpu", chip, devices * slices, topology, per_host, chip_config, slices)


def _gpu(name: str, chip: Chip, spec: str, per_host: int, hosts: int = 1) -> Target:
    return Target(name, "gpu", chip, per_host * hosts, f"1x{hosts}x{per_host}", gpu_spec=spec)


TARGETS: dict[str, Target] = {target.name: target for target in (
    _tpu("tpu-v4-8", TPU_V4, "v4:2x2x1", (2, 2, 1), 4, chip_config="megacore"),  # 4 chips, 8 TensorCores
    _tpu("tpu-v5e-1", TPU_V5E, "v5e:1x1", (1, 1, 1), 1),
    _tpu("tpu-v5e-4", TPU_V5E, "v5e:2x2", (2, 2, 1), 4),
    _tpu("tpu-v5e-8", TPU_V5E, "v5e:2x4", (2, 4, 1), 8),
    _tpu("tpu-v5e-16", TPU_V5E, "v5e:4x4", (2, 2, 1), 16),  # four hosts of 4 chips
    _tpu("tpu-v5e-8x2", TPU_V5E, "v5e:2x4", (2, 4, 1), 8, slices=2),  # two slices (multi-slice, DCN between)
    _tpu("tpu-v5p-8", TPU_V5P, "v5p:2x2x1", (2, 2, 1), 4),  # 4 chips, 8 TensorCores as 4 megacore devices
    _tpu("tpu-v6e-1", TPU_V6E, "v6e:1x1", (1, 1, 1), 1),
    _tpu("tpu-v6e-8", TPU_V6E, "v6e:2x4", (2, 4, 1), 8),
    _gpu("a100-1", A100, _A100_SPEC, 1),
    _gpu("a100-8", A100, _A100_SPEC, 8),
    _gpu("h100-1", H100, _H100_SPEC, 1),
    _gpu("h100-8", H100, _H100_SPEC, 8),
    _gpu("h100-8x2", H100, _H100_SPEC, 8, hosts=2),
    _gpu("h200-1", H200, _H200_SPEC, 1),
    _gpu("h200-8", H200, _H200_SPEC, 8),
)}


def find_target(name: str) -> Target:
    """The target called `name`; UsageError listing the known ones otherwise."""
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def deviceless_environment() -> dict[str, str]:
    """The environment the TPU and GPU plugins need to start on a machine without their hardware: libtpu asks
    no metadata server, finds one local worker and lets other processes load it at the same time (it locks a TPU
    VM's chips otherwise, /tmp/libtpu_lockfile); JAX's CUDA plugin skips its driver check (which calls cuInit)."""
    return {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-1",
            "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"}


def _package_version(name: str) -> tuple[int, int, int]:
    parts = [int(p) for p in importlib.metadata.version(name).split(".")[:3] if p.isdigit()]
    return (*parts, 0, 0, 0)[:3]


def _gpu_target_config(target: Target) -> str:
    """The device description with the cuDNN and CUDA runtime versions this install would run with."""
    cudnn, runtime = _package_version("nvidia-cudnn-cu12"), _package_version("nvidia-cuda-runtime-cu12")
    return (target.gpu_spec + 'platform_name: "CUDA"\n'
            f"dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} patch: {cudnn[2]} }}\n"
            f"runtime_version {{ major: {runtime[0]} minor: {runtime[1]} patch: {runtime[2]} }}\n")


def missing_library(target: Target) -> str | None:
    """One line saying what to install to compile for `target`, or None where it is installed."""
    if target.platform == "tpu" and importlib.util.find_spec("libtpu") is None:
        return f"compiling for {target.name} needs libtpu (about 680 MB): {TPU_INSTALL}"
    if target.platform == "gpu":
        try:
            cuda = importlib.util.find_spec("jax_plugins.xla_cuda12") and _package_version("nvidia-cudnn-cu12")
        except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError):
            cuda = None
        if not cuda:
            return f"compiling for {target.name} needs JAX's CUDA plugin and libraries (about 4.4 GB): {CUDA_INSTALL}"
    return None


def target_devices(target: Target) -> list[jax.Device]:
    """The devices of `target`, made by its platform's compiler to compile for (they run nothing), in the order a
    mesh takes them. UsageError with the install command where the platform's library is missing."""
    if problem := missing_library(target):
        raise UsageError(problem)
    if jax.config.jax_platforms != "cpu":
        raise UsageError(f"compiling for {target.name} runs JAX on the CPU: set JAX_PLATFORMS=cpu (the commands' "
                         "--compile_for does)")
    from jax.experimental import topologies

    for name, value in deviceless_environment().items():  # read when the plugin starts, at its first topology
        os.environ.setdefault(name, value)
    if target.platform == "tpu":
        topology = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                                chip_config_name=target.chip_config,
                                                chips_per_host_bounds=target.chips_per_host,
                                                num_slices=target.slices)
    else:
        topology = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                                target_config=_gpu_target_config(target))
    devices = list(topology.devices)
    if len(devices) != target.devices:
        raise UsageError(f"{target.name}: the compiler made {len(devices)} devices, not {target.devices}; this "
                         "libtpu or CUDA plugin describes the slice differently")
    return devices
