"""Device mesh and shardings: one program from 1 CPU to a pod.

The mesh has two axes: ``data`` (the batch is split over it) and ``model`` (size 1
unless asked; large dense kernels such as VGG's 102 M-parameter fc6 are split over it
along their output features). Everything else is replicated. `jax.jit` with these
NamedShardings then inserts the collectives (the pjit style); the batch-norm statistics
of a jitted step are those of the global batch.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn.errors import ConfigError

DATA = "data"
MODEL = "model"
# Dense kernels with at least this many elements are split over the model axis.
MODEL_SHARD_MIN_SIZE = 1 << 20


def make_mesh(model_parallel: int = 1, devices: list | None = None) -> Mesh:
  """A (data, model) mesh over all devices (or `devices`)."""
  devices = list(devices if devices is not None else jax.devices())
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ConfigError(
        f"train.model_parallel={model_parallel} must divide the number of devices "
        f"({len(devices)}).")
  grid = np.array(devices).reshape(len(devices) // model_parallel, model_parallel)
  return Mesh(grid, (DATA, MODEL))


def data_size(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
  """The batch must split evenly over the data axis (every process included)."""
  if batch_size <= 0:
    raise ConfigError(f"{what} must be positive, got {batch_size}.")
  n = data_size(mesh)
  if batch_size % n:
    raise ConfigError(
        f"{what}={batch_size} is not divisible by the {n} devices of the data axis; "
        f"use a multiple of {n}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _param_spec(path: tuple, leaf: Any, mesh: Mesh) -> P:
  """Split big dense kernels (2-D 'kernel' leaves) over `model` by output features."""
  name = getattr(path[-1], "key", None) if path else None
  shape = getattr(leaf, "shape", ())
  if (mesh.shape[MODEL] > 1 and name == "kernel" and len(shape) == 2
      and np.prod(shape) >= MODEL_SHARD_MIN_SIZE and shape[1] % mesh.shape[MODEL] == 0):
    return P(None, MODEL)
  return P()


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """NamedShardings for a train state (or any pytree of its arrays): dense kernels
  split over `model` when that axis is larger than 1, the rest replicated.
  Optimizer moments mirror the parameters' paths, so they follow the same rule."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, _param_spec(path, leaf, mesh)), state)


def maybe_initialize_distributed() -> bool:
  """Joins a multi-host job when launched under a cluster (SLURM, or the JAX
  coordinator variables); a single process does nothing. Returns whether it joined."""
  cluster = (os.environ.get("JAX_COORDINATOR_ADDRESS")
             or int(os.environ.get("SLURM_NTASKS", "1")) > 1)
  if cluster:
    # Must run before anything touches the backend (no jax.devices() before this).
    jax.distributed.initialize()
    return True
  return False
