"""The Fast R-CNN box head (Girshick 2015) on RPN proposals: sampling, loss, detections.

Training (Fast R-CNN section 2.3; torchvision's defaults): the ground-truth boxes join
the proposals; a candidate whose best IoU with a box is >= 0.5 is foreground with that
box's class, the rest background; each image samples `rois` candidates, at most a
quarter foreground. The head classifies each sampled RoI into background + classes
(cross-entropy) and regresses the R-CNN deltas (weights 10, 10, 5, 5) of foreground
RoIs to their box (smooth L1), divided by the number sampled.

Inference: per class, each proposal's box decoded with that class's deltas and its
softmax score; scores below `score_threshold` dropped, NMS at `nms_iou` within each
class, the best `detections` kept: rows (x1, y1, x2, y2, score, class), padding
rows with class -1 and score 0.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.detection import boxes as box_ops
from cnn.detection import rpn as rpn_lib

Array = jax.Array

# Fast R-CNN's smooth L1 (eq. 3: quadratic below 1) on the BOX_WEIGHTS-scaled deltas;
# torchvision's head uses 1/9, closer to plain L1.
SMOOTH_L1_BETA = 1.0


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The box head's sampling and inference settings."""
  rois: int = 32                  # RoIs sampled per image (the paper: 64, 128 from 2 images)
  positive_fraction: float = 0.25
  fg_iou: float = 0.5
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  detections: int = 20


class BoxHead(nn.Module):
  """Two fully connected layers on pooled RoI features, then the class logits
  (background + `num_classes`) and per-class deltas (or one class-agnostic set).

  Input (..., ph, pw, C); returns (logits (..., K + 1), deltas (..., K + 1 or 1, 4)).
  """
  num_classes: int
  hidden: int = 128
  class_agnostic: bool = False

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    lead = x.shape[:-3]
    x = x.reshape(*lead, -1)
    x = nn.relu(nn.Dense(self.hidden, name="fc6")(x))
    x = nn.relu(nn.Dense(self.hidden, name="fc7")(x))
    logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                      name="cls_score")(x)
    slots = 1 if self.class_agnostic else self.num_classes + 1
    deltas = nn.Dense(4 * slots, kernel_init=nn.initializers.normal(0.001),
                      name="bbox_pred")(x)
    return logits, deltas.reshape(*lead, slots, 4)


def roi_targets(key: Array, proposals: Array, valid: Array, gt_boxes: Array,
                gt_classes: Array, gt_valid: Array, cfg: HeadConfig
                ) -> tuple[Array, Array, Array, Array]:
  """One image's sampled RoIs and their targets.

  Args:
    key: PRNG key of the sampling.
    proposals: (P, 4) with valid (P,) bool.
    gt_boxes: (G, 4), gt_classes (G,) int in [0, K), gt_valid (G,) bool.

  Returns:
    (rois (R, 4), labels (R,) int32: 0 background, 1 + class foreground, deltas
    (R, 4) to the matched box, weights (R,) float: 1 where a RoI was sampled, 0 for
    padding when an image has fewer candidates than R).
  """
  candidates = jnp.concatenate([proposals, gt_boxes], 0)
  usable = jnp.concatenate([valid, gt_valid], 0)
  short = cfg.rois - candidates.shape[0]
  if short > 0:     # fewer candidates than RoIs: unusable rows keep the shape static
    candidates = jnp.concatenate([candidates, jnp.zeros((short, 4), candidates.dtype)])
    usable = jnp.concatenate([usable, jnp.zeros(short, bool)])
  iou = jnp.where(gt_valid[None], box_ops.box_iou(candidates, gt_boxes), -1.0)
  column, label = rpn_lib.match(iou, cfg.fg_iou, cfg.fg_iou, allow_low_quality=False)
  label = jnp.where(usable, label, -1)
  sampled = rpn_lib.sample(key, label, cfg.rois, cfg.positive_fraction)
  # The sampled candidates first (in index order), then unsampled ones as padding.
  order = jnp.argsort(~sampled, stable=True)[:cfg.rois]
  rois = candidates[order]
  weights = sampled[order].astype(jnp.float32)
  labels = jnp.where(label[order] > 0, gt_classes[column[order]] + 1, 0).astype(jnp.int32)
  # Padding RoIs may be degenerate; give them a unit box so encode stays finite.
  safe = jnp.where(weights[:, None] > 0, rois, jnp.array([0.0, 0.0, 1.0, 1.0]))
  matched = jnp.where(labels[:, None] > 0, gt_boxes[column[order]], safe)
  return safe, labels, box_ops.encode(matched, safe, box_ops.BOX_WEIGHTS), weights


def _class_slot(deltas: Array, labels: Array) -> Array:
  """The deltas (..., 4) of each RoI's class slot ((..., S, 4) with S = 1: shared)."""
  if deltas.shape[-2] == 1:
    return deltas[..., 0, :]
  return jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)[..., 0, :]


def head_loss(logits: Array, deltas: Array, labels: Array, target_deltas: Array,
              weights: Array) -> tuple[Array, Array]:
  """(classification cross-entropy, box smooth-L1) of sampled RoIs, both divided by
  the number sampled; logits (..., K + 1), deltas (..., S, 4), the rest from
  `roi_targets`."""
  count = jnp.maximum(jnp.sum(weights), 1.0)
  logp = jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  cls_loss = jnp.sum(ce * weights) / count
  fg = weights * (labels > 0)
  box = jnp.sum(rpn_lib.smooth_l1(_class_slot(deltas, labels) - target_deltas,
                                  SMOOTH_L1_BETA), -1)
  return cls_loss, jnp.sum(box * fg) / count


def detect(logits: Array, deltas: Array, proposals: Array, valid: Array,
           image_size: tuple[int, int], cfg: HeadConfig) -> Array:
  """One image's detections (cfg.detections, 6) = (x1, y1, x2, y2, score, class)."""
  p, k1 = logits.shape
  k = k1 - 1
  scores = jax.nn.softmax(logits)[:, 1:]                          # (P, K) no background
  if deltas.shape[1] == 1:
    per_class = jnp.broadcast_to(deltas, (p, k, 4))
  else:
    per_class = deltas[:, 1:]
  boxes = box_ops.decode(per_class, proposals[:, None], box_ops.BOX_WEIGHTS)
  boxes = box_ops.clip_boxes(boxes, *image_size).reshape(p * k, 4)
  classes = jnp.tile(jnp.arange(k), p)
  scores = scores.reshape(p * k)
  wide = ((boxes[:, 2] - boxes[:, 0]) > 1e-2) & ((boxes[:, 3] - boxes[:, 1]) > 1e-2)
  keep_mask = jnp.repeat(valid, k) & (scores >= cfg.score_threshold) & wide
  scores = jnp.where(keep_mask, scores, -jnp.inf)
  keep = box_ops.batched_nms(boxes, scores, classes, cfg.nms_iou, cfg.detections)
  ok = keep >= 0
  index = jnp.maximum(keep, 0)
  rows = jnp.concatenate([boxes[index], scores[index, None],
                          classes[index, None].astype(boxes.dtype)], -1)
  padding = jnp.array([0, 0, 0, 0, 0, -1], boxes.dtype)
  return jnp.where(ok[:, None], rows, padding)
