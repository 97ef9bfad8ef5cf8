"""Scaling out with JAX's own sharding: a named device mesh, where each array lives on it, and multi-host start-up.

The mesh has two axes. `data` splits the batch; `fsdp` splits the batch too and, in addition, the parameters
and optimizer state (each matrix along its largest axis that `fsdp` divides), so that every device holds a
1/fsdp slice of the model. Vectors (biases, LayerNorm) and scalars are replicated. The compiler (GSPMD)
inserts the all-gathers and reduce-scatters. A `tensor` axis for model parallelism would be one more name in
`MESH_AXES` and its own partition specs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxgpt.system.errors import UsageError

DATA, FSDP = "data", "fsdp"
MESH_AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # FSDP is data parallelism with sharded state: both axes split the batch
# Set by launchers (with JAX's own JAX_COORDINATOR_ADDRESS) when no cluster manager is detected.
NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp) mesh over all visible devices (of every process): data = devices // fsdp."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise UsageError(f"--fsdp={fsdp} does not divide the {len(devices)} devices; "
                         f"use one of {', '.join(map(str, _divisors(len(devices))))}")
    # Auto axes: the compiler propagates shardings from the jit boundaries and the constraints we place.
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    slices = len({getattr(device, "slice_index", 0) for device in devices})
    if slices == 1:
        return jax.make_mesh((len(devices) // fsdp, fsdp), MESH_AXES, axis_types=axis_types, devices=devices)
    # TPU slices joined by the data-center network: FSDP's gathers stay inside a slice (its fast links), and the
    # data axis spans the slices, whose only traffic is the gradients' reduction
    per_slice = len(devices) // slices
    if per_slice % fsdp:
        raise UsageError(f"--fsdp={fsdp} does not divide the {per_slice} devices of one of the {slices} slices; "
                         f"use one of {', '.join(map(str, _divisors(per_slice)))}")
    grid = mesh_utils.create_hybrid_device_mesh((per_slice // fsdp, fsdp), (slices, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: the product of the batch axes' sizes."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data-parallel devices; say which sizes work if not."""
    shards = batch_shards(mesh)
    if batch_size % shards:
        lower, upper = batch_size // shards * shards, (batch_size // shards + 1) * shards
        choices = f"--batch_size={lower} or {upper}" if lower else f"--batch_size={upper}"
        raise UsageError(f"batch_size {batch_size} does not split over {shards} devices "
                         f"(data {mesh.shape[DATA]} x fsdp {mesh.shape[FSDP]}); use a multiple of {shards}, "
                         f"e.g. {choices}")


def param_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Shard a matrix's largest axis that `fsdp` divides over `fsdp`; replicate vectors, scalars and the rest."""
    if fsdp == 1 or len(shape) < 2:
        return PartitionSpec()
    divisible = [axis for axis in range(len(shape)) if shape[axis] % fsdp == 0]
    if not divisible:
        return PartitionSpec()
    largest = max(divisible, key=lambda axis: (shape[axis], -axis))  # the first of equal sizes
    return PartitionSpec(*(FSDP if axis == largest else None for axis in range(len(shape))))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a training run's arrays live on the mesh: `state` mirrors the train state's pytree."""

    mesh: Mesh
    state: Any  # pytree of NamedSharding

    @classmethod
    def for_state(cls, mesh: Mesh, abstract_state: Any) -> Placement:
        """Shardings for every leaf of `abstract_state` (params, optimizer moments, counters) by its shape."""
        fsdp = mesh.shape[FSDP]
        state = jax.tree_util.tree_map(lambda leaf: NamedSharding(mesh, param_spec(leaf.shape, fsdp)), abstract_state)
        return cls(mesh, state)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Rows split over the batch axes: (B, T) -> (B / shards, T) per device."""
        return self.batch_along(0)

    def batch_along(self, axis: int) -> NamedSharding:
        """Arrays whose axis `axis` holds the batch rows, e.g. a call's windows (K, A, B, T + 1) with axis 2."""
        return NamedSharding(self.mesh, PartitionSpec(*(None,) * axis, BATCH_AXES))

    def constrain_batch(self, *arrays: jax.Array) -> tuple[jax.Array, ...]:
        """Inside jit: ask the compiler to split these (B, ...) arrays over the batch axes."""
        return tuple(jax.lax.with_sharding_constraint(a, self.batch) for a in arrays)

    def replicate(self, array: np.ndarray) -> jax.Array:
        """A host array copied to every device of every process (each process passes the same values)."""
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, self.replicated, lambda index: array[index])


def multihost_requested(flag: bool) -> bool:
    """--multihost, or an environment that names a coordinator (JAX's variable, or a multi-worker TPU on GKE)."""
    tpu_workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return flag or bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or len(tpu_workers) > 1


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"${name} must be an integer, got {raw!r}") from None


def initialize_distributed(flag: bool) -> None:
    """Join the other processes (jax.distributed.initialize) when asked to; a no-op when already joined.

    JAX finds the coordinator, process count and process id itself on TPU pods, SLURM, Open MPI and Kubernetes.
    Elsewhere set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process.
    Must run before anything touches a device.
    """
    if not multihost_requested(flag) or jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(num_processes=_env_int(NUM_PROCESSES_ENV), process_id=_env_int(PROCESS_ID_ENV))
    except (ValueError, RuntimeError) as err:  # no coordinator, process count or id; or jax already started
        raise UsageError(f"multi-host start-up failed ({err}); run on a TPU pod or a cluster JAX detects, or set "
                         f"JAX_COORDINATOR_ADDRESS=host:port, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}") from None


def is_main_process() -> bool:
    """Process 0 prints, writes metrics and plots; every process takes part in computation and checkpoints."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
