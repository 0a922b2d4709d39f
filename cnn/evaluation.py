"""Evaluating a finished (or running) run from its workdir, for every task."""
from __future__ import annotations

import pathlib
from typing import Any, Optional

import ml_collections
import numpy as np

from cnn import checkpoint as ckpt_lib
from cnn import config as config_lib
from cnn import data as data_lib
from cnn import train
from cnn import transfer
from cnn.errors import ConfigError, unknown_choice


def restore_state(workdir: pathlib.Path, *, best: bool = False):
  """(run, state, step) of a workdir's latest (or best) checkpoint."""
  workdir = pathlib.Path(workdir)
  config = config_lib.load_saved(workdir)
  run = train.build_run(config)
  state, shardings = train.init_state(run)
  tc = run.config.train
  checkpointer = ckpt_lib.Checkpointer(workdir, best_metric=tc.best_metric,
                                       best_mode=tc.best_mode, read_only=True)
  abstract = ckpt_lib.abstract_like(state, shardings)
  step, restored = (checkpointer.restore_best(abstract) if best
                    else checkpointer.restore_latest(abstract))
  if restored is None:
    raise ConfigError(f"{workdir} has no readable {'best ' if best else ''}checkpoint; "
                      "train first with python -m scripts.train.")
  return run, restored, step


def evaluate_workdir(workdir: pathlib.Path, *, best: bool = False) -> dict[str, Any]:
  """The task's scores of a run's checkpoint on its evaluation split (classification:
  loss and top-1/top-5 error; segmentation: mean IoU and FCN's other scores)."""
  run, state, step = restore_state(workdir, best=best)
  return {"step": int(step), **train.evaluate_run(run, state)}


def extract_features(workdir: str | pathlib.Path, *, split: str = "eval",
                     source: Optional[str] = None, data_dir: Optional[str] = None,
                     layer: Optional[str] = None, what: str = "output",
                     best: bool = False, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Features from a run's checkpoint for a split of its own data, or of `source`
  (any cnn.data source, e.g. new images for a classifier trained on the features).

  Returns ``features`` (N, ...) float32, ``labels`` (N,) int32 and the ``layer`` name.
  """
  if split not in transfer.SPLITS:
    raise unknown_choice("split", split, transfer.SPLITS)
  run, state, _ = restore_state(pathlib.Path(workdir), best=best)
  ds = run.dataset
  if source is not None:
    d = run.config.data
    ds = data_lib.load(source, data_dir=data_dir, image_size=d.image_size,
                       channels=d.channels or run.input_shape[-1])
  part = {"train": ds.train, "eval": ds.eval, "test": ds.test}[split]
  return transfer.split_features(run, state, part, layer=layer, what=what,
                                 batch_size=batch_size)


def fit_and_test_accuracy(config: ml_collections.ConfigDict,
                          workdir: str | pathlib.Path) -> float:
  """Trains `config` afresh in `workdir` and returns the top-1 accuracy of its final
  checkpoint on the evaluation split (1 - top-1 error)."""
  train.fit(config, workdir, overwrite=True)
  return 1.0 - evaluate_workdir(pathlib.Path(workdir))["top1_error"]


def linear_probe_accuracy(workdir: str | pathlib.Path, source: str, *, seed: int = 0,
                          best: bool = False) -> float:
  """The trained network as a fixed feature extractor: a logistic regression on its
  penultimate features of `source`'s training split, scored on its test split.

  The features are standardised first (their scales differ by orders of magnitude
  between units, which slows lbfgs and skews the L2 penalty).
  """
  # pylint: disable=import-outside-toplevel  (sklearn only when probing)
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  run, state, _ = restore_state(pathlib.Path(workdir), best=best)
  ds = data_lib.load(source)
  fit_on = transfer.split_features(run, state, ds.train)
  test_on = transfer.split_features(run, state, ds.test)
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000,
                                                           random_state=seed))
  clf.fit(fit_on["features"], fit_on["labels"])
  return float(clf.score(test_on["features"], test_on["labels"]))
