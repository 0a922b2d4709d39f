"""Evaluating a finished (or running) run from its workdir."""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import ml_collections

from cnn import checkpoint as ckpt_lib
from cnn import train
from cnn.errors import ConfigError


def load_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  saved = workdir / "config.json"
  if not saved.exists():
    raise ConfigError(f"{workdir} holds no config.json; pass the workdir of a run made "
                      "by scripts.train.")
  return ml_collections.ConfigDict(json.loads(saved.read_text()))


def restore_state(workdir: pathlib.Path, *, best: bool = False,
                  build_run: Callable = train.build_run, trainer: str = "scripts.train"):
  """(run, state, step) of a workdir's latest (or best) checkpoint; `build_run` makes
  the run from its saved config (segmentation runs pass their own)."""
  workdir = pathlib.Path(workdir)
  config = load_run_config(workdir)
  run = build_run(config)
  state, shardings = train.init_state(run)
  checkpointer = ckpt_lib.Checkpointer(workdir, best_metric=config.train.get("best_metric"),
                                       best_mode=config.train.get("best_mode", "min"),
                                       read_only=True)
  abstract = ckpt_lib.abstract_like(state, shardings)
  step, restored = (checkpointer.restore_best(abstract) if best
                    else checkpointer.restore_latest(abstract))
  if restored is None:
    raise ConfigError(f"{workdir} has no readable {'best ' if best else ''}checkpoint; "
                      f"train first with python -m {trainer}.")
  return run, restored, step


def evaluate_workdir(workdir: pathlib.Path, *, best: bool = False) -> dict[str, Any]:
  """The task's scores (classification: top-1/top-5 error and loss; detection: mAP)
  of a run's checkpoint on its evaluation split."""
  run, state, step = restore_state(workdir, best=best)
  import jax
  eval_step = jax.jit(train.make_eval_step(run.model, run.step_cfg.task))
  ds = run.dataset
  bs = run.config.train.get("eval_batch_size") or run.config.train.batch_size
  result = train.evaluate(eval_step, state, ds.eval, batch_size=bs, mean=ds.mean,
                          std=ds.std, mesh=run.mesh, out_size=run.out_size,
                          task=run.step_cfg.task)
  return {"step": int(step), **result}
