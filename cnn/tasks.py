"""Tasks: what differs between learning problems; `cnn.train.fit` is the same loop.

A task says how a model's output meets the labels (the loss and the train metrics),
what evaluation accumulates per batch and how those batches become scores, which
metric is "best" by default, and the one line the CLI prints. Selected by
``config.task``:

    classification   labels (N,) int; softmax cross-entropy; top-1/top-5 error
    segmentation     labels (N, H, W) int masks (-1: ignored); pixel cross-entropy;
                     FCN's pixel accuracy, mean accuracy, mean IoU, fw IoU
    multilabel       labels (N, K) 0/1; a sigmoid per class, binary cross-entropy;
                     per-class average precision and mAP
    regression       labels (N,) numbers; one linear output, MSE; MSE, MAE
    detection        labels (N, B, 5) int32 (x1, y1, x2, y2, class; rows of -1 pad);
                     Faster R-CNN's losses; mAP@0.5 and mAP@[.5:.95] (cnn/detection/)

Adding a task is one class with the members of `Task` plus one `register` line.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn import metrics as metrics_lib
from cnn.errors import ConfigError, unknown_choice


def main_output(output):
  """Models with auxiliary heads return (main, aux, ...) in training: the first is the
  prediction."""
  return output[0] if isinstance(output, (tuple, list)) else output


def sum_batches(batches: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """The element-wise sum of per-batch sums (host side)."""
  total = {k: np.asarray(v, np.float64) for k, v in batches[0].items()}
  for b in batches[1:]:
    for k, v in b.items():
      total[k] = total[k] + np.asarray(v, np.float64)
  return total


class Task:
  """Classification: the base every task refines (one example, one class)."""

  name = "classification"
  best_metric = "eval_top1_error"
  best_mode = "min"
  # Labels with the image's spatial layout (masks) cannot follow an on-device random
  # crop or resize, so such a task loads its images at data.image_size instead.
  dense_labels = False
  # True: `eval_batch` returns sums, added up on the device; False: it returns
  # per-example arrays (detections), and `eval_scores` gets the list of batches.
  sum_on_device = True

  def load_data(self, config):
    """The Dataset ``config.data`` names, with this task's labels."""
    from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
    d = config.data
    return data_lib.load(d.source, data_dir=d.data_dir, validation_size=d.validation_size,
                         train_size=d.train_size, seed=config.seed, image_size=d.image_size,
                         channels=d.channels,
                         num_classes=d.num_classes, task=self.name)

  def train_metric_names(self) -> tuple[str, ...]:
    return ("loss", "top1_error", "top5_error")

  def forward_train(self, model, variables, images, labels, rng):
    """(output, new batch statistics) of a train-mode apply."""
    del labels
    output, updates = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
    return output, updates.get("batch_stats", variables["batch_stats"])

  def loss(self, output, labels, *, label_smoothing: float = 0.0):
    """(mean loss, train metrics); auxiliary heads (GoogLeNet) count 0.3 each."""
    logits = main_output(output)
    loss = jnp.mean(metrics_lib.cross_entropy(logits, labels, label_smoothing))
    total = loss
    if isinstance(output, (tuple, list)):
      for aux in output[1:]:
        total = total + 0.3 * jnp.mean(metrics_lib.cross_entropy(aux, labels,
                                                                 label_smoothing))
    return total, {
        "loss": loss,
        "top1_error": 1.0 - jnp.mean(metrics_lib.topk_correct(logits, labels, 1)),
        "top5_error": 1.0 - jnp.mean(metrics_lib.topk_correct(logits, labels, 5))}

  def predict(self, model, variables, images):
    return main_output(model.apply(variables, images, train=False))

  def eval_batch(self, model, variables, images, labels, mask) -> dict[str, jax.Array]:
    """Sums over the real (mask 1) examples of one evaluation batch."""
    logits = self.predict(model, variables, images)
    loss = metrics_lib.cross_entropy(logits, labels)
    return {"loss": jnp.sum(loss * mask),
            "top1": jnp.sum(metrics_lib.topk_correct(logits, labels, 1) * mask),
            "top5": jnp.sum(metrics_lib.topk_correct(logits, labels, 5) * mask),
            "count": jnp.sum(mask)}

  def gather(self, outputs) -> list[dict[str, Any]]:
    """The host-side batches `eval_scores` takes, from the eval step's outputs: one
    sum added up on the device (one transfer per evaluation), or every batch's
    per-example arrays when the task does not sum on the device."""
    if not self.sum_on_device:
      return [jax.device_get(out) for out in outputs]
    totals = None
    for out in outputs:
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    return [jax.device_get(totals)]

  def eval_scores(self, batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    t = sum_batches(batches)
    n = max(float(t["count"]), 1.0)
    return {"loss": float(t["loss"]) / n, "top1_error": 1.0 - float(t["top1"]) / n,
            "top5_error": 1.0 - float(t["top5"]) / n, "examples": int(t["count"])}

  def summary(self, record: dict[str, Any]) -> str:
    if "eval_top1_error" not in record:
      return f"step {record.get('step')}: train loss {record.get('train_loss')}"
    return (f"step {record['step']}: test accuracy "
            f"{100 * (1 - record['eval_top1_error']):.2f}% (top-1 error "
            f"{100 * record['eval_top1_error']:.2f}%, eval loss {record['eval_loss']:.4f})")


class SegmentationTask(Task):
  """Per-pixel classification (FCN, U-Net); pixels labelled < 0 count nowhere."""

  name = "segmentation"
  best_metric = "eval_mean_iou"
  best_mode = "max"
  dense_labels = True

  def load_data(self, config):
    """Digit canvases (``data.canvas``) for the canvas sources, else a masked source."""
    from cnn.data import canvas  # pylint: disable=import-outside-toplevel
    d = config.data
    if d.source not in canvas.CANVAS_SOURCES:
      if not d.source.startswith("tfds:"):
        raise ConfigError(f"data.source={d.source!r} has no masks for the segmentation "
                          f"task; use {', '.join(canvas.CANVAS_SOURCES)} or "
                          "tfds:oxford_iiit_pet.")
      return super().load_data(config)
    return canvas.load_canvas(d.source, **canvas.config_kwargs(config))

  def loss(self, output, labels, *, label_smoothing: float = 0.0):
    del label_smoothing
    logits = main_output(output)
    loss = metrics_lib.mean_pixel_cross_entropy(logits, labels)
    valid = (labels >= 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    metrics = {"loss": loss}
    for k in (1, 5):
      correct = jnp.sum(metrics_lib.pixel_topk_correct(logits, labels, k) * valid)
      metrics[f"top{k}_error"] = 1.0 - correct / count
    return loss, metrics

  def eval_batch(self, model, variables, images, labels, mask):
    logits = self.predict(model, variables, images)
    labels = jnp.where(mask[:, None, None] > 0, labels, metrics_lib.IGNORE)
    total, count = metrics_lib.pixel_cross_entropy(logits, labels)
    return {"loss": total, "pixels": count,
            "confusion": metrics_lib.confusion_matrix(labels, jnp.argmax(logits, -1),
                                              logits.shape[-1])}

  def eval_scores(self, batches):
    t = sum_batches(batches)
    result = metrics_lib.segmentation_scores(t["confusion"])
    result["loss"] = float(t["loss"]) / max(float(t["pixels"]), 1.0)
    return result

  def summary(self, record):
    if "eval_mean_iou" not in record:
      return super().summary(record)
    return (f"step {record['step']}: mean IoU {100 * record['eval_mean_iou']:.2f}%, pixel "
            f"accuracy {100 * record['eval_pixel_accuracy']:.2f}%, mean accuracy "
            f"{100 * record['eval_mean_accuracy']:.2f}%")


class _CanvasTargetTask(Task):
  """Image-level labels of the digit canvases (``data.canvas``): the other heads."""
  target = ""

  def load_data(self, config):
    from cnn.data import canvas  # pylint: disable=import-outside-toplevel
    d = config.data
    if d.source not in canvas.CANVAS_SOURCES:
      raise ConfigError(f"task={self.name!r} reads the digit canvases' {self.target} "
                        f"labels; set data.source to one of "
                        f"{', '.join(canvas.CANVAS_SOURCES)} (got {d.source!r}).")
    return canvas.load_canvas(d.source, target=self.target,
                              **canvas.config_kwargs(config))


class MultiLabelTask(_CanvasTargetTask):
  """Several labels per image (deck 5): a sigmoid per class, binary cross-entropy;
  scored by per-class average precision and their mean (mAP). Labels (N, K) 0/1."""

  name = "multilabel"
  target = "multilabel"
  best_metric = "eval_map"
  best_mode = "max"
  sum_on_device = False      # AP ranks all examples: the scores come to the host

  def train_metric_names(self):
    return ("loss", "hamming_error")

  def loss(self, output, labels, *, label_smoothing: float = 0.0):
    del label_smoothing
    logits = main_output(output)
    loss = jnp.mean(metrics_lib.sigmoid_cross_entropy(logits, labels))
    wrong = (logits >= 0) != (labels > 0)
    return loss, {"loss": loss, "hamming_error": jnp.mean(wrong.astype(jnp.float32))}

  def eval_batch(self, model, variables, images, labels, mask):
    logits = self.predict(model, variables, images)
    return {"scores": jax.nn.sigmoid(logits), "labels": labels, "mask": mask,
            "loss": jnp.mean(metrics_lib.sigmoid_cross_entropy(logits, labels), axis=-1)}

  def eval_scores(self, batches):
    keep = np.concatenate([b["mask"] for b in batches]) > 0
    take = lambda k: np.concatenate([b[k] for b in batches])[keep]  # noqa: E731
    result = metrics_lib.multilabel_scores(take("scores"), take("labels"))
    result.update(loss=float(np.mean(take("loss"))), examples=int(keep.sum()))
    return result

  def summary(self, record):
    if "eval_map" not in record:
      return super().summary(record)
    return (f"step {record['step']}: mAP {100 * record['eval_map']:.2f}%, exact-match "
            f"error {100 * record['eval_exact_match_error']:.2f}%, Hamming error "
            f"{100 * record['eval_hamming_error']:.2f}%")


class RegressionTask(_CanvasTargetTask):
  """A number per image (deck 5): one linear output, mean squared error; scored by MSE,
  MAE and how often the rounded prediction is exact. Labels (N,) (digit counts)."""

  name = "regression"
  target = "count"
  best_metric = "eval_mae"
  best_mode = "min"

  def train_metric_names(self):
    return ("loss", "mae")

  def _prediction(self, output):
    return main_output(output)[..., 0].astype(jnp.float32)

  def loss(self, output, labels, *, label_smoothing: float = 0.0):
    del label_smoothing
    error = self._prediction(output) - labels.astype(jnp.float32)
    loss = jnp.mean(error ** 2)
    return loss, {"loss": loss, "mae": jnp.mean(jnp.abs(error))}

  def eval_batch(self, model, variables, images, labels, mask):
    prediction = self._prediction(self.predict(model, variables, images))
    error = prediction - labels.astype(jnp.float32)
    exact = (jnp.round(prediction) == labels).astype(jnp.float32)
    return {"se": jnp.sum(error ** 2 * mask), "ae": jnp.sum(jnp.abs(error) * mask),
            "exact": jnp.sum(exact * mask), "count": jnp.sum(mask)}

  def eval_scores(self, batches):
    t = sum_batches(batches)
    n = max(float(t["count"]), 1.0)
    mse = float(t["se"]) / n
    return {"loss": mse, "mse": mse, "mae": float(t["ae"]) / n,
            "rounded_error": 1.0 - float(t["exact"]) / n, "examples": int(t["count"])}

  def summary(self, record):
    if "eval_mae" not in record:
      return super().summary(record)
    return (f"step {record['step']}: MAE {record['eval_mae']:.4f}, MSE "
            f"{record['eval_mse']:.4f}, rounded prediction exact on "
            f"{100 * (1 - record['eval_rounded_error']):.2f}%")


# name -> factory of the tasks defined here; tasks that live in their own package
# register themselves when imported, and `get` imports them by module name on first use
# (a plug-in by name: cnn.tasks does not import what subclasses it).
_REGISTRY: dict[str, Callable[[], Task]] = {
    "classification": Task,
    "segmentation": SegmentationTask,
    "multilabel": MultiLabelTask,
    "regression": RegressionTask,
}
_PLUGINS = {"detection": "cnn.detection.task"}


def names() -> list[str]:
  return sorted({*_REGISTRY, *_PLUGINS})


def register(name: str, factory: Callable[[], Task]) -> None:
  _REGISTRY[name] = factory


def get(name: str) -> Task:
  """The task called `name`; an unknown name is one sentence with the choices."""
  if name not in _REGISTRY and name in _PLUGINS:
    importlib.import_module(_PLUGINS[name])   # registers it
  if name not in _REGISTRY:
    raise unknown_choice("task", name, names())
  return _REGISTRY[name]()
