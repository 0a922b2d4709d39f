"""Box arithmetic: IoU, the R-CNN box deltas, clipping and non-maximum suppression.

Boxes are (x1, y1, x2, y2) in pixels of a continuous image plane: pixel (i, j) covers
[j, j + 1) x [i, i + 1), so a box's width is x2 - x1 (no "+ 1"). Every function takes
jax or numpy arrays and keeps static shapes, so all of them run under `jax.jit`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# The R-CNN deltas' weights of Faster R-CNN's box head (torchvision, Detectron):
# the targets dx, dy, dw, dh are scaled to roughly unit variance.
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# The RPN's deltas are used unscaled (torchvision's RPN).
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# exp(dw) is clamped so a wild prediction cannot overflow (Detectron: log(1000 / 16)).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def _xp(*arrays):
  """numpy for numpy inputs (the host-side metrics), jax.numpy otherwise."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def box_area(boxes):
  """(...,) areas of (..., 4) boxes; inverted boxes have area 0."""
  xp = _xp(boxes)
  w = xp.maximum(boxes[..., 2] - boxes[..., 0], 0)
  h = xp.maximum(boxes[..., 3] - boxes[..., 1], 0)
  return w * h


def box_iou(a, b):
  """(N, M) intersection over union of boxes a (N, 4) and b (M, 4).

  Two empty boxes have IoU 0 (not 0 / 0).
  """
  xp = _xp(a, b)
  top_left = xp.maximum(a[:, None, :2], b[None, :, :2])
  bottom_right = xp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = xp.maximum(bottom_right - top_left, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0)


def _centre_size(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes, reference, weights: Sequence[float] = BOX_WEIGHTS):
  """R-CNN deltas (..., 4) = (dx, dy, dw, dh) that take `reference` boxes to `boxes`.

  dx = wx (x - x_a) / w_a, dy = wy (y - y_a) / h_a, dw = ww log(w / w_a),
  dh = wh log(h / h_a) with (x, y) the centres (Girshick et al. 2014, appendix C).
  Both box sets need positive sizes.
  """
  xp = _xp(boxes, reference)
  wx, wy, ww, wh = weights
  x, y, w, h = _centre_size(boxes)
  xa, ya, wa, ha = _centre_size(reference)
  return xp.stack([wx * (x - xa) / wa, wy * (y - ya) / ha,
                   ww * xp.log(w / wa), wh * xp.log(h / ha)], axis=-1)


def decode(deltas, reference, weights: Sequence[float] = BOX_WEIGHTS):
  """The boxes (..., 4) that deltas (..., 4) describe relative to `reference`
  (the inverse of `encode`; dw, dh clamped at MAX_LOG_SCALE)."""
  xp = _xp(deltas, reference)
  wx, wy, ww, wh = weights
  xa, ya, wa, ha = _centre_size(reference)
  x = deltas[..., 0] / wx * wa + xa
  y = deltas[..., 1] / wy * ha + ya
  w = xp.exp(xp.minimum(deltas[..., 2] / ww, MAX_LOG_SCALE)) * wa
  h = xp.exp(xp.minimum(deltas[..., 3] / wh, MAX_LOG_SCALE)) * ha
  return xp.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], axis=-1)


def clip_boxes(boxes, height: int, width: int):
  """Boxes (..., 4) clipped to the image [0, width] x [0, height]."""
  xp = _xp(boxes)
  limits = xp.asarray([width, height, width, height], boxes.dtype)
  return xp.clip(boxes, 0, limits)


def nms(boxes: Array, scores: Array, iou_threshold: float,
        max_output: Optional[int] = None) -> Array:
  """Greedy non-maximum suppression with a static output size.

  Visits boxes in descending score (ties: lower index first) and keeps each one whose
  IoU with every box kept before it is <= `iou_threshold`. Boxes with score -inf
  (padding) are never kept.

  Args:
    boxes: (N, 4).
    scores: (N,).
    iou_threshold: a box overlapping a kept one by more than this is dropped.
    max_output: length of the result (default N).

  Returns:
    int32 (max_output,): indices into `boxes` of the kept boxes in descending score,
    padded with -1.
  """
  n = boxes.shape[0]
  max_output = n if max_output is None else max_output
  order = jnp.argsort(-scores, stable=True)
  sorted_boxes = boxes[order]
  valid = scores[order] > -jnp.inf
  # Whether box i (in score order) overlaps box j too much: computed once, then the
  # greedy pass only reads rows of it.
  overlaps = box_iou(sorted_boxes, sorted_boxes) > iou_threshold
  earlier = jnp.arange(n)

  def visit(i, keep):
    suppressed = jnp.any(keep & overlaps[i] & (earlier < i))
    return keep.at[i].set(valid[i] & ~suppressed)

  keep = jax.lax.fori_loop(0, n, visit, jnp.zeros(n, bool))
  # Kept positions first, in score order; the rest become n and then -1.
  positions = jnp.sort(jnp.where(keep, earlier, n))
  if max_output > n:
    positions = jnp.concatenate([positions, jnp.full(max_output - n, n, positions.dtype)])
  positions = positions[:max_output]
  return jnp.where(positions < n, order[jnp.minimum(positions, n - 1)], -1).astype(jnp.int32)


def batched_nms(boxes: Array, scores: Array, classes: Array, iou_threshold: float,
                max_output: Optional[int] = None) -> Array:
  """`nms` done separately for each class, in one pass: every class's boxes are moved
  to their own region of the plane (offset by class x (largest coordinate + 1)), so
  boxes of different classes never overlap (torchvision's batched_nms trick)."""
  offset = jnp.max(boxes) + 1.0
  shifted = boxes + (classes.astype(boxes.dtype) * offset)[:, None]
  return nms(shifted, scores, iou_threshold, max_output)
