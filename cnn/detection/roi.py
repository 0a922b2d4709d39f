"""Region-of-interest pooling: Fast R-CNN's RoIPool and Mask R-CNN's RoIAlign.

Both cut a fixed (ph, pw) grid of features out of an NHWC map for each box, so the
box head sees one shape whatever the box's size. Boxes are given in image pixels and
scaled to the map by `spatial_scale` (1 / the backbone's stride).

RoIAlign follows torchvision's ``roi_align(..., aligned=True)``: a box's coordinates
times `spatial_scale` minus 0.5 (the map's sample points sit at pixel centres), each
bin averaged over `sampling_ratio` x `sampling_ratio` bilinear samples, a sample
further than one pixel outside the map counts 0, and one within that pixel reads the
border. Bilinear interpolation is separable, so the average over a bin is one
(ph, H) matrix of row weights and one (pw, W) matrix of column weights per box, and
the pooled features are two contractions with the map (cheap, jit-friendly, exact).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def bilinear_weights(coords: Array, size: int) -> Array:
  """(..., size) weights with which a bilinear sample at `coords` (...,) reads the
  positions 0..size-1 of one axis, with torchvision's border rules."""
  outside = (coords < -1.0) | (coords > size)
  c = jnp.maximum(coords, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, size - 1, low + 1)
  frac = jnp.where(at_end, 0.0, c - low)
  positions = jnp.arange(size)
  weights = ((1.0 - frac)[..., None] * (positions == low[..., None])
             + frac[..., None] * (positions == high[..., None]))
  return jnp.where(outside[..., None], 0.0, weights)


def _bin_weights(start: Array, length: Array, bins: int, samples: int, size: int) -> Array:
  """(K, bins, size): each bin's mean bilinear weights over its `samples` evenly spaced
  sample points, for K intervals [start, start + length) of one axis."""
  step = length / bins
  offsets = jnp.arange(bins)[:, None] + (jnp.arange(samples)[None, :] + 0.5) / samples
  coords = start[:, None, None] + offsets[None] * step[:, None, None]   # (K, bins, samples)
  return jnp.mean(bilinear_weights(coords, size), axis=2)


def align_weights(boxes: Array, output_size, spatial_scale: float, sampling_ratio: int,
                  height: int, width: int, aligned: bool = True) -> tuple[Array, Array]:
  """Row (K, ph, H) and column (K, pw, W) weights of RoIAlign for boxes (K, 4)."""
  if sampling_ratio <= 0:
    # torchvision's adaptive ceil(box / bin) samples would make shapes depend on data.
    raise ValueError(f"sampling_ratio must be a positive int under jit, got {sampling_ratio}")
  ph, pw = _pair(output_size)
  offset = 0.5 if aligned else 0.0
  boxes = jax.lax.stop_gradient(boxes) * spatial_scale - offset
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  if not aligned:     # the legacy rule: boxes at least one cell wide
    w, h = jnp.maximum(w, 1.0), jnp.maximum(h, 1.0)
  rows = _bin_weights(boxes[:, 1], h, ph, sampling_ratio, height)
  cols = _bin_weights(boxes[:, 0], w, pw, sampling_ratio, width)
  return rows, cols


def roi_align(features: Array, boxes: Array, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> Array:
  """RoIAlign (He et al. 2017) with torchvision's conventions.

  Args:
    features: (N, H, W, C).
    boxes: (K, 5) = (batch index, x1, y1, x2, y2) in image pixels.
    output_size: ph or (ph, pw).
    spatial_scale: map cells per image pixel (1 / stride).
    sampling_ratio: bilinear samples per bin along each axis (static, > 0).
    aligned: the half-pixel shift (torchvision's aligned=True).

  Returns:
    (K, ph, pw, C).
  """
  _, height, width, _ = features.shape
  rows, cols = align_weights(boxes[:, 1:], output_size, spatial_scale, sampling_ratio,
                             height, width, aligned)
  maps = jnp.take(features, boxes[:, 0].astype(jnp.int32), axis=0)
  return jnp.einsum("kph,khwc,kqw->kpqc", rows, maps, cols)


def roi_align_batched(features: Array, boxes: Array, output_size,
                      spatial_scale: float = 1.0, sampling_ratio: int = 2) -> Array:
  """`roi_align` for the same number of boxes per image: boxes (N, R, 4) on features
  (N, H, W, C) give (N, R, ph, pw, C), without copying a map per box."""
  n, r = boxes.shape[:2]
  _, height, width, _ = features.shape
  rows, cols = align_weights(boxes.reshape(n * r, 4), output_size, spatial_scale,
                             sampling_ratio, height, width)
  rows = rows.reshape(n, r, *rows.shape[1:])
  cols = cols.reshape(n, r, *cols.shape[1:])
  return jnp.einsum("nrph,nhwc,nrqw->nrpqc", rows, features, cols)


def _round_half_away(x: Array) -> Array:
  """C's round(), which torchvision's RoIPool uses (jnp.round rounds half to even)."""
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _pool_masks(start: Array, end: Array, bins: int, size: int) -> Array:
  """(K, bins, size) membership of each map position in each RoIPool bin."""
  length = jnp.maximum(end - start + 1, 1).astype(jnp.float32)
  step = length / bins
  p = jnp.arange(bins, dtype=jnp.float32)
  lo = jnp.clip(jnp.floor(p[None] * step[:, None]).astype(jnp.int32) + start[:, None], 0, size)
  hi = jnp.clip(jnp.ceil((p[None] + 1) * step[:, None]).astype(jnp.int32) + start[:, None],
                0, size)
  positions = jnp.arange(size)
  return (positions >= lo[..., None]) & (positions < hi[..., None])


def roi_pool(features: Array, boxes: Array, output_size, spatial_scale: float = 1.0) -> Array:
  """RoIPool (Girshick 2015, Fast R-CNN) as torchvision computes it: the box rounded
  to map cells, split into ph x pw bins of ceil/floor-rounded cells, each bin's
  maximum (0 for an empty bin).

  Args:
    features: (N, H, W, C).
    boxes: (K, 5) = (batch index, x1, y1, x2, y2) in image pixels.
    output_size: ph or (ph, pw).
    spatial_scale: map cells per image pixel.

  Returns:
    (K, ph, pw, C).
  """
  ph, pw = _pair(output_size)
  _, height, width, _ = features.shape
  cells = _round_half_away(jax.lax.stop_gradient(boxes[:, 1:]) * spatial_scale)
  cells = cells.astype(jnp.int32)
  rows = _pool_masks(cells[:, 1], cells[:, 3], ph, height)      # (K, ph, H)
  cols = _pool_masks(cells[:, 0], cells[:, 2], pw, width)       # (K, pw, W)
  maps = jnp.take(features, boxes[:, 0].astype(jnp.int32), axis=0)
  # A bin is a rectangle, so its maximum is the maximum over rows of column maxima.
  low = jnp.asarray(-jnp.inf, features.dtype)
  by_col = jnp.max(jnp.where(cols[:, None, :, :, None], maps[:, :, None], low), axis=3)
  pooled = jnp.max(jnp.where(rows[:, :, :, None, None], by_col[:, None], low), axis=2)
  return jnp.where(jnp.isfinite(pooled), pooled, 0.0)
