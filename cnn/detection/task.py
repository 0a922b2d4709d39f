"""Detection as a task of the one engine (`cnn.tasks`): Faster R-CNN on digit canvases.

Labels are int32 (N, G, 5) rows (x1, y1, x2, y2, class) in pixels, padding rows all
-1 (`cnn.detection.data`). The model samples its anchors and RoIs in the train
forward (it needs the boxes, so `forward_train` passes them), the loss is the sum of
the four Faster R-CNN terms, and evaluation gathers every image's detections on the
host for mAP@0.5 (the best metric) and mAP@[.5:.95].
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from cnn import tasks
from cnn.detection import head as head_lib
from cnn.detection import metrics as metrics_lib
from cnn.detection import rpn as rpn_lib
from cnn.errors import ConfigError

LOSS_TERMS = ("rpn_objectness", "rpn_box", "roi_classifier", "roi_box")


def detection_losses(output: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The four loss terms of a train-mode FasterRCNN output."""
  rpn_cls, rpn_box = rpn_lib.rpn_loss(output["rpn_logits"], output["rpn_deltas"],
                                      output["rpn_objectness"], output["rpn_sampled"],
                                      output["rpn_targets"])
  roi_cls, roi_box = head_lib.head_loss(output["roi_logits"], output["roi_deltas"],
                                        output["roi_labels"], output["roi_targets"],
                                        output["roi_weights"])
  return dict(zip(LOSS_TERMS, (rpn_cls, rpn_box, roi_cls, roi_box)))


class DetectionTask(tasks.Task):
  """Boxes with classes; Faster R-CNN's losses; VOC mAP."""

  name = "detection"
  best_metric = "eval_map50"
  best_mode = "max"
  # The boxes are in the stored images' pixels: no on-device crop or resize.
  dense_labels = True
  # Detections are matched across the whole split on the host.
  sum_on_device = False

  def load_data(self, config):
    """Digits pasted on canvases at random scales (``data.canvas``)."""
    from cnn.data import canvas  # pylint: disable=import-outside-toplevel
    from cnn.detection import data  # pylint: disable=import-outside-toplevel
    d = config.data
    if d.source not in canvas.CANVAS_SOURCES:
      raise ConfigError(f"task='detection' reads digit canvases; set data.source to one "
                        f"of {', '.join(canvas.CANVAS_SOURCES)} (got {d.source!r}).")
    return data.load_detection(d.source, **canvas.config_kwargs(config))

  def train_metric_names(self) -> tuple[str, ...]:
    return ("loss", *LOSS_TERMS)

  def forward_train(self, model, variables, images, labels, rng):
    output, updates = model.apply(variables, images, train=True, targets=labels,
                                  rngs={"sample": rng, "dropout": rng},
                                  mutable=["batch_stats"])
    return output, updates.get("batch_stats", variables["batch_stats"])

  def loss(self, output, labels, *, label_smoothing: float = 0.0):
    """(sum of the four terms, the terms and their sum as "loss")."""
    del labels, label_smoothing
    terms = detection_losses(output)
    total = sum(terms.values())
    return total, {"loss": total, **terms}

  def predict(self, model, variables, images):
    """(N, D, 6) detections (x1, y1, x2, y2, score, class; class -1 pads)."""
    return model.apply(variables, images, train=False)["detections"]

  def eval_batch(self, model, variables, images, labels, mask):
    return {"detections": self.predict(model, variables, images), "labels": labels,
            "mask": mask}

  def eval_scores(self, batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """mAP@0.5, mAP@0.75 and mAP@[.5:.95] over the real (mask 1) images."""
    detections = np.concatenate([np.asarray(b["detections"]) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
    real = np.concatenate([np.asarray(b["mask"]) for b in batches]) > 0
    num_classes = int(max(labels[..., 4].max(), detections[..., 5].max(), 0)) + 1
    scores = metrics_lib.detection_scores(list(detections[real]), list(labels[real]),
                                          max(num_classes, 1))
    return {**scores, "examples": int(real.sum())}

  def summary(self, record: dict[str, Any]) -> str:
    if "eval_map50" not in record:
      return super().summary(record)
    return (f"step {record['step']}: mAP@0.5 {100 * record['eval_map50']:.2f}%, "
            f"mAP@[.5:.95] {100 * record['eval_map']:.2f}% "
            f"(mAP@0.75 {100 * record['eval_map75']:.2f}%)")


tasks.register("detection", DetectionTask)
