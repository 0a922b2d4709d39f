"""Checkpoints of the whole train state with orbax: save, resume, keep the best.

A run's workdir holds ``checkpoints/<step>`` (the last `keep` saves) and ``best/<step>``
(the best by a chosen evaluation metric). Saving is asynchronous; orbax finalises a
step directory atomically, and only removes older steps after a newer one is complete,
so a kill during a write leaves the previous checkpoint intact.

Restoring takes an abstract state whose leaves carry the target shardings, so a
checkpoint written on 8 devices restores onto 1 and the other way round. A latest
checkpoint that cannot be read (corrupt, half-written by a crash outside orbax's
atomic rename) is reported in one line and the previous one is used.
"""
from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from cnn.errors import ConfigError

log = logging.getLogger(__name__)


def _manager(path: pathlib.Path, keep: int, *, best_metric: Optional[str] = None,
             best_mode: str = "min", read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode=best_mode, keep_checkpoints_without_metrics=False if best_metric else True,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(path.resolve(), options=options)


class Checkpointer:
  """The last `keep` checkpoints plus the best one of a run directory."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "min",
               read_only: bool = False):
    self.workdir = pathlib.Path(workdir)
    self.best_metric = best_metric
    self.latest = _manager(self.workdir / "checkpoints", keep, read_only=read_only)
    self.best = (_manager(self.workdir / "best", 1, best_metric=best_metric,
                          best_mode=best_mode, read_only=read_only)
                 if best_metric else None)

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts writing `state` as `step` (in the background); False if it exists."""
    if step in self.latest.all_steps():
      return False
    return self.latest.save(step, args=ocp.args.StandardSave(state), force=force)

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Offers `state` to the best-checkpoint slot; orbax keeps it if it is the best."""
    if self.best is None or self.best_metric not in metrics:
      return
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.StandardSave(state),
                   metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[Optional[int], Any]:
    """(step, state) of the newest readable checkpoint, or (None, None) if none."""
    for step in reversed(self.steps()):
      try:
        state = self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))
        return step, state
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: fall back
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if _is_structure_mismatch(e):
          raise ConfigError(
              f"The checkpoint at step {step} in {self.latest.directory} holds a "
              "different model or optimizer than this config; use another --workdir "
              "or pass --overwrite.") from None
        print(f"warning: checkpoint {step} in {self.latest.directory} is unreadable "
              f"({reason}); trying the previous one.", file=sys.stderr)
    return None, None

  def restore_best(self, abstract_state: Any) -> tuple[Optional[int], Any]:
    if self.best is None or not self.best.all_steps():
      return None, None
    step = self.best.best_step()
    return step, self.best.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()


def _is_structure_mismatch(error: Exception) -> bool:
  """Whether orbax refused because the saved tree does not match the target's."""
  text = str(error)
  return any(s in text for s in ("tree structure", "Dict key mismatch",
                                 "does not match", "Missing key", "Unexpected key",
                                 "shape mismatch", "Requested shape"))


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` carrying the target shardings (restore targets)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
