"""Checkpoints of the whole train state with orbax: save, resume, keep the best.

A run's workdir holds ``checkpoints/<step>`` (the last `keep` saves) and ``best/<step>``
(the best by a chosen evaluation metric). Saving is asynchronous; orbax finalises a
step directory atomically, and only removes older steps after a newer one is complete,
so a kill during a write leaves the previous checkpoint intact.

Restoring takes an abstract state whose leaves carry the target shardings, so a
checkpoint written on 8 devices restores onto 1 and the other way round.

Every save records a fingerprint of the state (one wrapping uint32 sum per array, see
`fingerprint`), because orbax reads a flipped bit in the array data back without
complaint. It is kept twice: in the step's orbax metadata (``_CHECKPOINT_METADATA``)
and in an index beside the steps (``fingerprints.json``), written durably *before*
the step is, so no complete step ever lacks it and deleting one file does not make a
damaged step look sound. A latest checkpoint that cannot be read, reads back with
another fingerprint, or has no fingerprint at all (nothing to verify it against) is
reported in one line, moved to ``checkpoints_unreadable/`` (so that it neither shadows
the step when it is written again nor is lost) and the previous one is used. A
checkpoint whose arrays have other names or shapes than the config's model and
optimizer is a `ConfigError`, not corruption.

A write that fails for lack of space is a `DiskFullError` of one line that names the
step and the newest checkpoint still intact (orbax only removes older steps after a
newer one is complete, so those are).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cnn.errors import ConfigError, DiskFullError, disk_full

UNREADABLE = "checkpoints_unreadable"
INDEX = "fingerprints.json"
_FINGERPRINT_KEY = "state_fingerprint"


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Silences orbax's absl log lines (read-only notices, errors about damaged files)
  where this module reports the outcome itself in one line."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _muted_stderr(linger_s: float = 0.5) -> Iterator[None]:
  """Sends stderr (the file descriptor and sys.stderr) to /dev/null while orbax reads
  a checkpoint that may be damaged. When a read fails, orbax closes its event loop
  while tensorstore reads of the other arrays are still under way; those finish on
  their own threads and print a traceback each ("Event loop is closed"). On a failure
  this waits `linger_s` for them before giving stderr back."""
  sys.stderr.flush()
  saved_fd, devnull_fd = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  saved_stream = sys.stderr
  os.dup2(devnull_fd, 2)
  sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- closed below
  try:
    yield
  except BaseException:
    time.sleep(linger_s)
    gc.collect()             # "Future exception was never retrieved" logs, while muted
    raise
  finally:
    sys.stderr.close()
    sys.stderr = saved_stream
    os.dup2(saved_fd, 2)
    os.close(saved_fd)
    os.close(devnull_fd)


class _HeldErrors(logging.Filter):
  """Holds orbax's ERROR log records back until the write they may be about is
  settled: a full disk makes its background threads log the same failure a dozen
  times, with tracebacks, while the run goes on, and the one line `Checkpointer`
  says then is enough. Records are passed on when the write succeeds or fails for
  another reason (`release`), and dropped when the disk was full (`drop`)."""

  def __init__(self):
    super().__init__()
    self.held: list[logging.LogRecord] = []
    self.passing = False

  def filter(self, record: logging.LogRecord) -> bool:
    if self.passing or record.levelno < logging.ERROR:
      return True
    self.held.append(record)
    return False

  def release(self) -> None:
    records, self.held = self.held, []
    self.passing = True
    try:
      for record in records:
        logging.getLogger(record.name).handle(record)
    finally:
      self.passing = False

  def drop(self) -> None:
    self.held = []


_HELD = _HeldErrors()
logging.getLogger("absl").addFilter(_HELD)


def _manager(path: pathlib.Path, keep: int, *, best_metric: Optional[str] = None,
             best_mode: str = "min", read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
      save_interval_steps=0 if read_only else 1,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode=best_mode, keep_checkpoints_without_metrics=False if best_metric else True,
      cleanup_tmp_directories=not read_only,
      # Orbax names its barriers by step ("async_write_complete.8"): the latest and
      # best managers saving the same step would otherwise share one, and fail.
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=path.name))
  # One item with a fixed handler: otherwise orbax guesses the layout from the first
  # step directory it reads, and an empty or damaged one makes it refuse all others.
  with _quiet_orbax():
    return ocp.CheckpointManager(path.resolve(), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


class Checkpointer:
  """The last `keep` checkpoints plus the best one of a run directory."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "min",
               read_only: bool = False):
    self.workdir = pathlib.Path(workdir)
    self.keep = keep
    self.read_only = read_only
    self.best_metric = best_metric
    self.latest = self._latest_manager()
    self.best = self._best_manager(best_metric, best_mode) if best_metric else None
    # The step each manager is writing in the background: a failure surfaces at the
    # next save or wait, and is reported for this step.
    self._writing: dict[str, Optional[int]] = {"latest": None, "best": None}
    self._abandoned = False      # True after a full disk: nothing more is written

  def _latest_manager(self) -> ocp.CheckpointManager:
    return _manager(self.workdir / "checkpoints", self.keep, read_only=self.read_only)

  def _best_manager(self, metric: str, mode: str) -> Optional[ocp.CheckpointManager]:
    """The best-checkpoint manager. Orbax reads every step's metrics when it starts,
    so one damaged metrics file would stop the run from ever resuming: the best/
    folder is then set aside (or, read-only, ignored) and tracking starts afresh."""
    directory = self.workdir / "best"
    make = lambda: _manager(directory, 1, best_metric=metric, best_mode=mode,
                            read_only=self.read_only)
    try:
      return make()
    except Exception as e:  # noqa: BLE001 -- damaged metadata: do not block the run
      if self.read_only:
        return None
      target = _free_path(self.workdir / UNREADABLE / "best")
      _move_once(directory, target)
      print(f"warning: the best checkpoints in {directory} are unreadable "
            f"({_first_line(e)}); moved to {target}, tracking the best afresh.",
            file=sys.stderr)
      return make()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts writing `state` as `step` (in the background); False if it exists."""
    if step in self.latest.all_steps():
      return False
    prints = fingerprint(state)
    self._wait("latest")
    with self._disk_full_is_one_line("latest", step):
      _record_fingerprint(pathlib.Path(self.latest.directory), step, prints)
      self._writing["latest"] = step
      return self.latest.save(step, args=ocp.args.StandardSave(state), force=force,
                              custom_metadata={_FINGERPRINT_KEY: prints})

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Offers `state` to the best-checkpoint slot; orbax keeps it if it is the best."""
    if self.best is None or self.best_metric not in metrics:
      return
    if step in self.best.all_steps():
      return
    prints = fingerprint(state)
    self._wait("best")
    with self._disk_full_is_one_line("best", step):
      _record_fingerprint(pathlib.Path(self.best.directory), step, prints)
      self._writing["best"] = step
      self.best.save(step, args=ocp.args.StandardSave(state),
                     metrics={self.best_metric: float(metrics[self.best_metric])},
                     force=True, custom_metadata={_FINGERPRINT_KEY: prints})

  def _manager_of(self, which: str) -> Optional[ocp.CheckpointManager]:
    return self.latest if which == "latest" else self.best

  def _wait(self, which: str) -> None:
    """Waits for the background write of `which` ("latest" or "best") to finish."""
    manager = self._manager_of(which)
    if manager is None or self._abandoned:
      return
    with self._disk_full_is_one_line(which, self._writing[which]):
      # Muted: a failed write makes tensorstore's threads print a traceback each as
      # orbax closes its event loop ("Event loop is closed").
      with _muted_stderr():
        manager.wait_until_finished()
    self._writing[which] = None
    if not any(step is not None for step in self._writing.values()):
      _HELD.release()      # held records may concern the other manager's write

  @contextlib.contextmanager
  def _disk_full_is_one_line(self, which: str, step: Optional[int]) -> Iterator[None]:
    """Turns a write failing for lack of space (orbax wraps it, often several times)
    into a DiskFullError naming `step` and the newest checkpoint still intact."""
    try:
      yield
    except DiskFullError:
      raise
    except Exception as e:  # noqa: BLE001 -- only a full disk is translated
      if not disk_full(e):
        _HELD.release()
        raise
      self._writing[which] = None
      self._abandon()
      # What a rerun resumes from: the latest checkpoints, whichever write failed.
      intact = [s for s in _complete_steps(pathlib.Path(self.latest.directory))
                if not (which == "latest" and s == step)]
      kind = "checkpoint" if which == "latest" else "best checkpoint"
      where = (f"checkpoints up to {max(intact)} are intact" if intact
               else "no earlier checkpoint exists")
      raise DiskFullError(f"no space left on device writing {kind} {step} in "
                          f"{self.workdir}; {where}.") from None

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[Optional[int], Any]:
    """(step, state) of the newest readable checkpoint, or (None, None) if none.

    Raises ConfigError when a checkpoint holds other arrays than `abstract_state`
    (another model or optimizer); sets aside one that is merely unreadable.
    """
    for step in reversed(self.steps()):
      try:
        with _quiet_orbax(), _muted_stderr():
          state = self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
          problem = _fingerprint_problem(self.latest, step, state)
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: fall back
        difference = _structure_difference(self.latest, step, abstract_state)
        if difference:
          raise ConfigError(
              f"The checkpoint at step {step} in {self.latest.directory} holds a "
              f"different model or optimizer than this config ({difference}); use "
              "another --workdir or pass --overwrite.") from None
        problem = _first_line(e)
      if problem is None:
        return step, state
      self._set_aside(step, problem)
    return None, None

  def _set_aside(self, step: int, problem: str) -> None:
    """Reports an unreadable step in one line and moves it out of orbax's sight."""
    source = pathlib.Path(self.latest.directory) / str(step)
    where = "left in place (read-only)"
    if not self.read_only:
      target = _free_path(self.workdir / UNREADABLE / str(step))
      _move_once(source, target)
      where = f"moved to {target}"
    if jax.process_index() == 0:   # every process finds the same: one report
      print(f"warning: checkpoint {step} in {source.parent} is unreadable ({problem}); "
            f"{where}, trying the previous one.", file=sys.stderr)
    # A failed restore can leave the manager's view of the directory stale.
    self.latest.close()
    self.latest = self._latest_manager()

  def restore_best(self, abstract_state: Any) -> tuple[Optional[int], Any]:
    if self.best is None or not self.best.all_steps():
      return None, None
    step = self.best.best_step()
    with _quiet_orbax():
      state = self.best.restore(step, args=ocp.args.StandardRestore(abstract_state))
      problem = _fingerprint_problem(self.best, step, state)
    if problem is not None:
      raise ConfigError(
          f"The best checkpoint {step} in {self.best.directory} cannot be trusted ({problem}); "
          "evaluate the latest checkpoint instead.")
    return step, state

  def _abandon(self) -> None:
    """After a full disk: lets orbax's background writes end and closes the managers
    with stderr muted (their threads print tracebacks as they fail, some even at
    interpreter exit unless closed), then drops the log records held meanwhile."""
    self._abandoned = True
    with _quiet_orbax(), _muted_stderr():
      for manager in (self.latest, self.best):
        if manager is None:
          continue
        with contextlib.suppress(Exception):
          manager.wait_until_finished()
        with contextlib.suppress(Exception):
          manager.close()
      time.sleep(0.5)        # tensorstore callbacks still finishing on their threads
      gc.collect()
    _HELD.drop()

  def wait(self) -> None:
    self._wait("latest")
    self._wait("best")

  def close(self) -> None:
    if self._abandoned:
      return
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()
    _HELD.release()


def check_compatible(workdir: str | pathlib.Path, abstract_state: Any) -> None:
  """Raises ConfigError if the newest checkpoint of `workdir` whose metadata reads
  holds other arrays than `abstract_state`. Reads only: run it before writing."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return
  manager = _manager(directory, 1, read_only=True)
  try:
    for step in reversed(sorted(manager.all_steps())):
      saved = _saved_shapes(manager, step)
      if saved is None:
        continue
      difference = _describe_difference(saved, _shapes(abstract_state))
      if difference:
        raise ConfigError(
            f"The checkpoint at step {step} in {directory} holds a different model or "
            f"optimizer than this config ({difference}); use another --workdir or pass "
            "--overwrite.")
      return
  finally:
    manager.close()


# ----------------------------------------------------------------------------------
# What a checkpoint holds: array names and shapes, and a fingerprint of the values
# ----------------------------------------------------------------------------------

def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/conv1/kernel' -> shape for every array of a state or of orbax metadata
  (whose containers are dicts where the state has dataclasses and namedtuples)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): _stored_shape(leaf) for path, leaf in flat}


def _stored_shape(leaf: Any) -> tuple[int, ...]:
  """The shape as stored: a typed PRNG key is saved as its uint32 key data."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
  return tuple(getattr(leaf, "shape", ()))


def _saved_shapes(manager: ocp.CheckpointManager, step: int):
  try:
    with _quiet_orbax(), _muted_stderr():   # reads every array's zarr metadata
      tree = manager.item_metadata(step)
  except Exception:  # noqa: BLE001 -- unreadable metadata: nothing to compare
    return None
  return _shapes(tree) if tree is not None else None


def _describe_difference(saved: dict, wanted: dict) -> str:
  """'' if equal, else the first difference in a few words (parameters first: they
  say most about which model it was)."""
  order = ("params/", "batch_stats/", "opt_state/")
  rank = lambda n: (next((i for i, p in enumerate(order) if n.startswith(p)), 3), n)
  for name in sorted(set(saved) | set(wanted), key=rank):
    if name not in saved:
      return f"it has no array {name}"
    if name not in wanted:
      return f"it has an array {name} this config does not"
    if tuple(saved[name]) != tuple(wanted[name]):
      return f"{name} is {tuple(saved[name])} there, {tuple(wanted[name])} here"
  return ""


def _structure_difference(manager: ocp.CheckpointManager, step: int,
                          abstract_state: Any) -> str:
  saved = _saved_shapes(manager, step)
  return "" if saved is None else _describe_difference(saved, _shapes(abstract_state))


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (one per element)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _fingerprint(state: Any) -> jax.Array:
  def one(x):
    words = _words(x).ravel()
    # Odd weights: a changed word changes the sum (mod 2**32) whatever its position,
    # and moved words change it too. Integer sums do not depend on the reduction
    # order, so 8 devices and 1 device agree.
    weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)
  leaves = jax.tree.leaves(state)
  return jnp.stack([one(x) for x in leaves]) if leaves else jnp.zeros([0], jnp.uint32)


def fingerprint(state: Any) -> list[int]:
  """One uint32 per array of `state`: the sum of its bit patterns with odd weights."""
  return [int(v) for v in np.asarray(jax.device_get(_fingerprint(state)))]


def _fingerprint_problem(manager: ocp.CheckpointManager, step: int,
                         state: Any) -> Optional[str]:
  """None if the restored `state` matches the fingerprint recorded for it (in the
  index or the step's metadata), else what is wrong: the values differ, or there is
  no fingerprint at all (such a step is not trusted)."""
  try:
    in_metadata = (manager.metadata(step).custom_metadata or {}).get(_FINGERPRINT_KEY)
  except Exception:  # noqa: BLE001 -- unreadable step metadata: the index must do
    in_metadata = None
  in_index = _read_index(pathlib.Path(manager.directory)).get(step)
  if in_metadata is None and in_index is None:
    return "it has no fingerprint to verify its values against"
  if None not in (in_metadata, in_index) and list(in_metadata) != list(in_index):
    return "its two recorded fingerprints disagree"
  saved = in_index if in_index is not None else in_metadata
  now = fingerprint(state)
  if list(saved) == now:
    return None
  names = list(_shapes(state))
  bad = [n for n, a, b in zip(names, saved, now) if a != b] or ["the array count"]
  return f"the values of {', '.join(bad[:3])} differ from those saved"


def _read_index(directory: pathlib.Path) -> dict[int, list[int]]:
  """step -> fingerprint of a manager directory's index ({} if absent or garbled)."""
  try:
    raw = json.loads((directory / INDEX).read_text())
    return {int(k): [int(x) for x in v] for k, v in raw.items()}
  except (OSError, ValueError, TypeError, AttributeError):
    return {}


def _record_fingerprint(directory: pathlib.Path, step: int, prints: list[int]) -> None:
  """Adds `step` to the index, durably (fsync, atomic rename) and before the step is
  written, so a kill at any moment leaves no complete step without its fingerprint.
  Entries of steps no longer on disk are dropped. Process 0 writes it (one writer on
  a shared filesystem); the others read it when they verify."""
  if jax.process_index() != 0:
    return
  directory.mkdir(parents=True, exist_ok=True)
  on_disk = set(_complete_steps(directory))
  index = {s: v for s, v in _read_index(directory).items() if s in on_disk}
  index[step] = prints
  tmp = directory / f".{INDEX}.tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps({str(s): index[s] for s in sorted(index)}) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, directory / INDEX)
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)           # the rename itself survives a power cut
  finally:
    os.close(dir_fd)


def _complete_steps(directory: pathlib.Path) -> list[int]:
  """Steps orbax has finalised in `directory` (renamed into place: all-digit names)."""
  try:
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and p.is_dir())
  except OSError:
    return []


def _move_once(source: pathlib.Path, target: pathlib.Path) -> None:
  """Moves `source` to `target` from process 0 only; with several processes (which
  read the same files and so decide alike) all wait until it has moved."""
  if jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("cnn:moved_unreadable")


def _free_path(path: pathlib.Path) -> pathlib.Path:
  """`path`, or `path`.2, .3, ... if taken (a step may be set aside more than once)."""
  candidate, n = path, 1
  while candidate.exists():
    n += 1
    candidate = path.with_name(f"{path.name}.{n}")
  return candidate


def _first_line(error: Exception) -> str:
  """The gist of an error for a one-line report (no tensorstore spec dumps)."""
  text = str(error).strip().split(" [tensorstore_spec")[0]
  return text.splitlines()[0][:200] if text else type(error).__name__


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` carrying the target shardings (restore targets)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
