"""Metrics and where they go: top-k error, metrics.jsonl, TensorBoard, a progress bar."""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn.errors import DiskFullError, disk_full


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits, per example."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = number of classes scoring strictly higher; ties count in the label's favour.
  rank = jnp.sum(logits > label_logit, axis=-1)
  return (rank < k).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy per example, with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


# ----------------------------------------------------------------------------------
# Per-pixel (segmentation): Long et al. 2015's metrics; see cnn/segmentation.py
# ----------------------------------------------------------------------------------

IGNORE = -1                  # label of pixels that count nowhere


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of the per-pixel softmax cross-entropies, number of labelled pixels).

  `logits` (..., H, W, K), `labels` (..., H, W) ints; pixels labelled < 0 count
  nowhere. The mean loss is the first over the second.
  """
  valid = labels >= 0
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid).astype(jnp.float32)


def mean_pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  total, count = pixel_cross_entropy(logits, labels)
  return total / jnp.maximum(count, 1.0)


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: Optional[jax.Array] = None) -> jax.Array:
  """(K, K) int32 counts n_ij of pixels of class i (rows) predicted as j (columns).

  Pixels labelled < 0 are skipped, and so are those of images whose entry in the 0/1
  `weights` (one per leading index: the padding of the last evaluation batch) is 0.
  Integer counts stay exact past float32's 2^24 (a Pets test set has ~60 M pixels).
  """
  labels = labels.astype(jnp.int32)
  w = (labels >= 0).astype(jnp.int32)
  if weights is not None:
    keep = (jnp.asarray(weights) > 0).astype(jnp.int32)
    w = w * keep.reshape(keep.shape + (1,) * (labels.ndim - keep.ndim))
  index = jnp.clip(labels, 0, num_classes - 1) * num_classes + jnp.clip(
      predictions.astype(jnp.int32), 0, num_classes - 1)
  counts = jnp.bincount(index.ravel(), weights=w.ravel(), length=num_classes ** 2)
  return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray) -> dict[str, Any]:
  """FCN's four metrics (module docstring) and the per-class IU of a confusion matrix."""
  n = np.asarray(confusion, np.float64)
  hits = np.diag(n)
  truth = n.sum(1)                        # t_i
  union = truth + n.sum(0) - hits         # t_i + sum_j n_ji - n_ii
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, hits / union, np.nan)
    accuracy = np.where(truth > 0, hits / truth, np.nan)
  total = truth.sum()
  present = union > 0
  return {
      "pixel_accuracy": float(hits.sum() / total) if total else float("nan"),
      "mean_accuracy": float(np.nanmean(accuracy)) if np.any(truth > 0) else float("nan"),
      "mean_iou": float(np.nanmean(iou)) if np.any(present) else float("nan"),
      "fw_iou": float(np.sum(truth[present] * iou[present]) / total) if total else
                float("nan"),
      "iou": [None if np.isnan(v) else float(v) for v in iou],
  }


def pixel_topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where a pixel's label is among its k largest logits (ties in its favour)."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, jnp.maximum(labels, 0)[..., None], axis=-1)
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


# Image-level heads of deck 5: multi-label (a sigmoid per class) and regression.

def sigmoid_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-class binary cross-entropy of logits against 0/1 labels (numerically stable:
  max(z, 0) - z y + log(1 + exp(-|z|)))."""
  z, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
  return jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Average precision of one class: the mean, over its positive examples, of the
  precision among the examples scored at least as high (ties count together, as in
  scikit-learn's average_precision_score). NaN without positives."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
  positives = int(labels.sum())
  if positives == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  # The last index of each run of equal scores: a threshold admits the whole run.
  ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
  hits = np.cumsum(labels)[ends]
  precision = hits / (ends + 1)
  recall_gain = np.diff(np.r_[0, hits]) / positives
  return float(np.sum(precision * recall_gain))


def multilabel_scores(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Per-class AP, their mean over the classes that occur (mAP), exact-match error and
  Hamming error (threshold 0.5) of sigmoid scores (N, K) against 0/1 labels (N, K)."""
  ap = [average_precision(scores[:, k], labels[:, k]) for k in range(labels.shape[1])]
  predicted = scores >= 0.5
  truth = labels > 0
  return {"map": float(np.nanmean(ap)) if not np.all(np.isnan(ap)) else float("nan"),
          "ap": [None if np.isnan(v) else float(v) for v in ap],
          "exact_match_error": float(np.mean(np.any(predicted != truth, axis=1))),
          "hamming_error": float(np.mean(predicted != truth))}


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl (a torn last line from a kill is skipped)."""
  rows = []
  path = pathlib.Path(path)
  if not path.exists():
    return rows
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def tensorboard_tag(key: str) -> str:
  """TensorBoard groups scalars by the part before "/": ``train_loss`` is logged as
  ``train/loss``, ``eval_top1_error`` as ``eval/top1_error`` (metrics.jsonl keeps the
  flat names)."""
  for prefix in ("train_", "eval_", "test_"):
    if key.startswith(prefix):
      return f"{prefix[:-1]}/{key[len(prefix):]}"
  return key


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class MetricWriter:
  """Writes one JSON line per logged step to metrics.jsonl and the same scalars to
  TensorBoard event files (tensorboardX; no TensorFlow needed). Only process 0 writes."""

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only writers need it
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops records past `step`: a resumed run rewrites the steps it repeats, so the
    file reads as if the run had never been interrupted."""
    if not self.enabled or not self.path.exists():
      return
    rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
    # Written aside and renamed: a kill during the rewrite must not lose the records.
    tmp = self.path.with_name(f".{self.path.name}.tmp")
    tmp.write_text("".join(strict_json(r) + "\n" for r in rows))
    os.replace(tmp, self.path)

  def write_hparams(self, config: Mapping[str, Any]) -> None:
    """The run's config in TensorBoard's HParams tab (flattened, dotted keys), in the
    same event files as the scalars so the two stay one run."""
    if self._tb is None:
      return
    from tensorboardX.summary import hparams  # pylint: disable=import-outside-toplevel
    flat = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
            for k, v in _flatten(config).items()}
    for summary in hparams(flat, {"eval/top1_error": 0.0}):
      self._tb.file_writer.add_summary(summary)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    line = strict_json(record) + "\n"
    try:
      with self.path.open("a") as f:
        f.write(line)
    except OSError as e:
      if not disk_full(e):
        raise
      raise DiskFullError(f"no space left on device writing step {step}'s metrics to "
                          f"{self.path}; free some space and run the same command again "
                          "to resume from the last checkpoint.") from None
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(tensorboard_tag(key), value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def _plain(value: Any) -> Any:
  """A JSON-ready scalar: numpy and jax scalars as Python ones, NaN and +-inf as None
  (strict JSON has no literal for them; None reads as "no value")."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _finite_tree(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {k: _finite_tree(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite_tree(v) for v in obj]
  return _plain(obj)


def strict_json(obj: Any, **kwargs) -> str:
  """`json.dumps` of `obj` with non-finite numbers as null: always strict JSON."""
  return json.dumps(_finite_tree(obj), allow_nan=False, **kwargs)


class ProgressBar:
  """tqdm's bar over the run's steps: step, loss, img/s and ETA (silent when quiet or
  on processes other than 0). `update` is given the absolute step, so a resumed run's
  bar starts where it stopped."""

  def __init__(self, total_steps: int, quiet: bool = False, stream=sys.stderr):
    import tqdm  # pylint: disable=import-outside-toplevel
    self.quiet = quiet or jax.process_index() != 0
    self._bar = None if self.quiet else tqdm.tqdm(
        total=total_steps, file=stream, unit="step", dynamic_ncols=True)
    self._position: int | None = None

  def update(self, step: int, **fields: float) -> None:
    if self._bar is None:
      return
    if self._position is None:       # resumed: the bar starts at the restored step
      self._bar.reset(total=self._bar.total)
      self._position = 0
    self._bar.update(step - self._position)
    self._position = step
    fields = {k: v for k, v in fields.items() if v is not None}   # skipped windows
    if fields:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
