"""Device mesh and shardings: one program from 1 CPU to a pod.

The mesh has two axes: ``data`` (the batch is split over it) and ``model`` (size 1
unless asked; large dense kernels such as VGG's 102 M-parameter fc6 are split over it
along their output features). Everything else is replicated. `jax.jit` with these
NamedShardings then inserts the collectives (the pjit style); the batch-norm statistics
of a jitted step are those of the global batch.
"""
from __future__ import annotations

import os
import threading
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


# Seconds; each may be overridden by the environment variable named beside it. The
# heartbeat timeout bounds how long a process whose peer died waits in a collective
# before JAX's coordination service ends it (JAX's default is 100 s).
INIT_TIMEOUT_S = ("CNN_DISTRIBUTED_INIT_TIMEOUT", 300)
HEARTBEAT_TIMEOUT_S = ("CNN_DISTRIBUTED_HEARTBEAT_TIMEOUT", 60)
SHUTDOWN_TIMEOUT_S = ("CNN_DISTRIBUTED_SHUTDOWN_TIMEOUT", 60)


def _seconds(setting: tuple[str, int]) -> int:
  name, default = setting
  value = os.environ.get(name, "")
  try:
    return int(value) if value else default
  except ValueError:
    raise ConfigError(f"{name}={value!r} must be a whole number of seconds.") from None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r} must be an integer.") from None


def distributed_settings(coordinator_address: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None) -> dict[str, Any] | None:
  """The arguments of `jax.distributed.initialize` for this launch, or None when this
  is a single process.

  Explicit values (the CLI's --coordinator_address/--num_processes/--process_id) win
  over JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; without an
  address, a SLURM step of several tasks (srun), or any launch with
  CNN_DISTRIBUTED=1 (a TPU pod slice), is left to JAX's auto-detection.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if address and "SLURM_JOB_ID" in os.environ:   # with srun: SLURM numbers the tasks
    count = count if count is not None else _env_int("SLURM_NTASKS")
    index = index if index is not None else _env_int("SLURM_PROCID")
  timeouts = {"initialization_timeout": _seconds(INIT_TIMEOUT_S),
              "heartbeat_timeout_seconds": _seconds(HEARTBEAT_TIMEOUT_S),
              "shutdown_timeout_seconds": _seconds(SHUTDOWN_TIMEOUT_S)}
  if address:
    # JAX reads only the address from the environment; without a count it fails with
    # "Number of processes must be defined", which names neither variable.
    if count is None or (count > 1 and index is None):
      raise ConfigError(
          f"The coordinator address is set ({address}) but not the "
          f"{'process count' if count is None else 'process id'}; set "
          "JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass --num_processes and "
          "--process_id) on every process.")
    if count < 1 or not 0 <= (index or 0) < count:
      raise ConfigError(f"The process id must be in [0, {count}) for {count} processes, "
                        f"got {index}.")
    if count == 1:
      return None
    return {"coordinator_address": address, "num_processes": count,
            "process_id": index, **timeouts}
  if count is not None and count > 1:
    raise ConfigError(f"{count} processes were asked for but no coordinator address; "
                      "set JAX_COORDINATOR_ADDRESS=host:port (process 0's host) or pass "
                      "--coordinator_address.")
  if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_NTASKS") or 1) > 1:
    return dict(timeouts)          # JAX's SLURM detection supplies the rest
  if os.environ.get("CNN_DISTRIBUTED") == "1":
    return dict(timeouts)          # asked for: JAX detects the cluster (TPU pods, MPI)
  return None


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Joins a multi-host job when launched under a cluster (srun, or the coordinator
  address with a process count and id; see `distributed_settings`); a single process
  does nothing. Returns whether it joined.

  Must run before anything touches the backend (no jax.devices() before it). A
  coordinator that cannot be reached, or peers that do not all arrive, end the
  process within the initialisation timeout with one line and exit status 2.
  """
  settings = distributed_settings(coordinator_address, num_processes, process_id)
  if settings is None:
    return False
  # JAX's preemption service would take SIGTERM from the loop's own handler (which
  # checkpoints, and agrees with the other processes on the step: see
  # `any_process`); without it a signalled process never stops.
  jax.config.update("jax_enable_preemption_service", False)
  timeout = settings["initialization_timeout"]
  where = settings.get("coordinator_address") or "the address derived from SLURM"
  # Past its deadline JAX aborts the process with a stack trace that blames a dead
  # task; this timer ends it a little earlier with what went wrong, in one line.
  timer = threading.Timer(timeout, _die, (
      f"error: could not join the distributed job at {where} within {timeout} s (not "
      "all processes arrived); start every process with the same coordinator address "
      "and process count, and check that process 0's host and port are reachable "
      f"(the timeout is ${INIT_TIMEOUT_S[0]}).",))
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(**{**settings, "initialization_timeout": timeout + 10})
  except Exception as e:  # noqa: BLE001 -- a refused or malformed address: one line
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise ConfigError(f"Could not join the distributed job at {where} ({first}).") from None
  finally:
    timer.cancel()
  return True


def _die(message: str) -> None:
  """Ends the process from a watchdog thread (the main thread is stuck in C++)."""
  os.write(2, (message + "\n").encode())
  os._exit(2)


# ----------------------------------------------------------------------------------
# Several processes: one decision for all
# ----------------------------------------------------------------------------------

_MESSAGE_BYTES = 2048   # a ConfigError's sentence, truncated to this many bytes


def agree(fn, *, primary_only: bool = False) -> None:
  """Runs `fn` on every process (or on process 0 only) and makes every process
  raise the same ConfigError, or none.

  Each process contributes the message of its ConfigError ("" if it passed); all
  gather them, and every process raises the first non-empty one. No process can go
  on (and write) while another refuses; the gather is also the barrier between
  the checks and the writes. A single process just runs `fn`.
  """
  message = ""
  if not primary_only or jax.process_index() == 0:
    try:
      fn()
    except ConfigError as e:
      if jax.process_count() == 1:
        raise
      message = str(e)
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  encoded = message.encode()[:_MESSAGE_BYTES]
  buffer = np.zeros([_MESSAGE_BYTES], np.uint8)
  buffer[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buffer))
  for row in gathered.reshape(jax.process_count(), _MESSAGE_BYTES):
    text = bytes(row).rstrip(b"\0").decode(errors="replace")
    if text:
      raise ConfigError(text)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (a collective: every process must call
  it at the same point). A single process returns `flag` without synchronising."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(np.asarray(multihost_utils.process_allgather(np.int32(flag)))))
