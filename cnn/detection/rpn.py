"""Faster R-CNN's region proposal network (Ren et al. 2015, section 3.1).

Anchors: at every cell of the backbone's map (stride s), A boxes centred on the cell's
centre ((x + 0.5) s, (y + 0.5) s), one per (size, aspect ratio). The head is a 3x3
convolution and two 1x1 convolutions: an objectness logit and 4 deltas per anchor.

Training (section 3.1.2): an anchor is positive when its IoU with some ground-truth
box is >= 0.7, or it is (one of) the best anchors of a box; negative below 0.3; the
rest are ignored. Each image samples up to `batch` anchors, at most half positive;
the loss is the binary cross-entropy of the sampled anchors' objectness plus the
smooth-L1 loss of the positives' deltas, both divided by the number sampled
(torchvision's normalisation).

Proposals: the top `pre_nms` anchors by objectness, decoded and clipped, boxes
smaller than `min_size` dropped, NMS at 0.7, the best `post_nms` kept. All shapes are
static: a missing proposal is a row with ``valid = False``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.detection import boxes as box_ops

Array = jax.Array

# Regions within 1/9 of a pixel-delta are penalised quadratically (torchvision's RPN).
SMOOTH_L1_BETA = 1.0 / 9.0


@dataclasses.dataclass(frozen=True)
class RPNConfig:
  """The RPN's sampling and proposal settings (torchvision's names)."""
  fg_iou: float = 0.7
  bg_iou: float = 0.3
  batch: int = 64             # anchors sampled per image (the paper: 256)
  positive_fraction: float = 0.5
  pre_nms: int = 300
  post_nms: int = 64
  nms_iou: float = 0.7
  min_size: float = 1.0


def make_anchors(feature_size: tuple[int, int], stride: int, sizes: Sequence[float],
                 ratios: Sequence[float]) -> np.ndarray:
  """(h * w * A, 4) anchors, ordered (row, column, anchor) like the head's outputs.

  Anchor (size s, ratio r = height / width) has area s^2: width s / sqrt(r), height
  s sqrt(r). A = len(sizes) * len(ratios), sizes varying fastest within a ratio.
  """
  h, w = feature_size
  shapes = np.array([(s / math.sqrt(r), s * math.sqrt(r)) for r in ratios for s in sizes],
                    np.float32)
  cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride,
                       indexing="ij")
  centres = np.stack([cx, cy], -1).reshape(h * w, 1, 2)
  half = shapes[None] / 2
  anchors = np.concatenate([centres - half, centres + half], -1)
  return anchors.reshape(-1, 4).astype(np.float32)


class RPNHead(nn.Module):
  """3x3 conv + ReLU, then per anchor an objectness logit and 4 deltas (1x1 convs).

  Returns (logits (N, h w A), deltas (N, h w A, 4)).
  """
  num_anchors: int
  features: int = 64

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    init = nn.initializers.normal(0.01)    # torchvision's RPN head init
    x = nn.relu(nn.Conv(self.features, (3, 3), padding=1, kernel_init=init, name="conv")(x))
    logits = nn.Conv(self.num_anchors, (1, 1), kernel_init=init, name="objectness")(x)
    deltas = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=init, name="deltas")(x)
    n = x.shape[0]
    return logits.reshape(n, -1), deltas.reshape(n, -1, 4)


def match(iou: Array, fg_iou: float, bg_iou: float, allow_low_quality: bool = True
          ) -> tuple[Array, Array]:
  """Matches each row (anchor or proposal) to its best column (ground-truth box).

  Args:
    iou: (A, G), with -1 in the columns of padding boxes.
    fg_iou, bg_iou: >= fg_iou is foreground, < bg_iou background, between ignored.
    allow_low_quality: a box's best rows (ties included) are foreground whatever
      their IoU (the paper's condition (i)), so every box has a positive.

  Returns:
    (matched column (A,) int32, label (A,) int32: 1 foreground, 0 background, -1
    ignored). Without any real box every row is background.
  """
  best = jnp.max(iou, axis=1)
  column = jnp.argmax(iou, axis=1).astype(jnp.int32)
  label = jnp.where(best >= fg_iou, 1, jnp.where(best < bg_iou, 0, -1))
  if allow_low_quality:
    best_of_box = jnp.max(iou, axis=0)                              # (G,)
    is_best = (iou == best_of_box[None]) & (best_of_box[None] > 0)
    label = jnp.where(jnp.any(is_best, axis=1), 1, label)
  return column, label.astype(jnp.int32)


def _rank(priority: Array) -> Array:
  """0-based rank of each entry in descending priority."""
  order = jnp.argsort(-priority, stable=True)
  return jnp.zeros_like(order).at[order].set(jnp.arange(priority.shape[0]))


def sample(key: Array, label: Array, batch: int, positive_fraction: float) -> Array:
  """A random subset of at most `batch` labelled rows, at most `positive_fraction`
  of them positive (label > 0), the rest negatives (label 0): the sampled mask.

  Uniform among positives and among negatives (random priorities ranked), with
  static shapes.
  """
  u = jax.random.uniform(key, label.shape)
  positive, negative = label > 0, label == 0
  max_positive = int(batch * positive_fraction)
  take_positive = positive & (_rank(jnp.where(positive, u, -1.0)) < max_positive)
  room = batch - jnp.sum(take_positive)
  take_negative = negative & (_rank(jnp.where(negative, u, -1.0)) < room)
  return take_positive | take_negative


def anchor_targets(key: Array, anchors: Array, gt_boxes: Array, gt_valid: Array,
                   cfg: RPNConfig) -> tuple[Array, Array, Array]:
  """One image's RPN targets.

  Args:
    key: PRNG key of the sampling.
    anchors: (A, 4).
    gt_boxes: (G, 4); gt_valid (G,) bool marks the real ones.

  Returns:
    (objectness (A,) float 0/1, sampled (A,) bool, deltas (A, 4) of each anchor's
    matched box, meaningful where objectness is 1).
  """
  iou = jnp.where(gt_valid[None], box_ops.box_iou(anchors, gt_boxes), -1.0)
  column, label = match(iou, cfg.fg_iou, cfg.bg_iou)
  label = jnp.where(jnp.any(gt_valid), label, 0)
  sampled = sample(key, label, cfg.batch, cfg.positive_fraction)
  matched = jnp.where(gt_valid[column][:, None], gt_boxes[column], anchors)
  deltas = box_ops.encode(matched, anchors, box_ops.RPN_WEIGHTS)
  return (label > 0).astype(jnp.float32), sampled, deltas


def smooth_l1(x: Array, beta: float) -> Array:
  """Huber-style smooth L1 (Fast R-CNN eq. 3 with a transition at `beta`)."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def rpn_loss(logits: Array, deltas: Array, objectness: Array, sampled: Array,
             target_deltas: Array) -> tuple[Array, Array]:
  """(objectness BCE, box smooth-L1) over a batch: logits (N, A), deltas (N, A, 4),
  targets from `anchor_targets` (stacked over N). Both are divided by the number of
  sampled anchors."""
  weight = sampled.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  bce = jnp.maximum(logits, 0) - logits * objectness + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  cls_loss = jnp.sum(bce * weight) / count
  positive = weight * objectness
  box = jnp.sum(smooth_l1(deltas - target_deltas, SMOOTH_L1_BETA), -1)
  return cls_loss, jnp.sum(box * positive) / count


def propose(anchors: Array, logits: Array, deltas: Array, image_size: tuple[int, int],
            cfg: RPNConfig) -> tuple[Array, Array]:
  """One image's proposals: (boxes (post_nms, 4), valid (post_nms,) bool)."""
  top = min(cfg.pre_nms, anchors.shape[0])
  scores, index = jax.lax.top_k(logits, top)
  boxes = box_ops.decode(deltas[index], anchors[index], box_ops.RPN_WEIGHTS)
  boxes = box_ops.clip_boxes(boxes, *image_size)
  big = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_size) & (
      (boxes[:, 3] - boxes[:, 1]) >= cfg.min_size)
  scores = jnp.where(big, scores, -jnp.inf)
  keep = box_ops.nms(boxes, scores, cfg.nms_iou, cfg.post_nms)
  valid = keep >= 0
  return jnp.where(valid[:, None], boxes[jnp.maximum(keep, 0)], 0.0), valid
