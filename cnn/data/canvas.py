"""Digits pasted on a canvas: offline dense-prediction tasks built from real digits.

``data.source = "canvas"`` (``canvas:mnist``, ``canvas:digits``): 1 to 3 digits pasted
at random, non-overlapping places on a black canvas (sizes in ``data.canvas``). For
``task="segmentation"`` each pixel is labelled 0 (background) or 1 + its digit's class
where the digit's ink is at least half its maximum (11 classes). MNIST digits are cut
to the 20x20 box their ink fits in (LeCun et al. size-normalised every digit to 20x20
before centring it by mass in 28x28); scikit-learn's digits (used when MNIST is
absent, or asked for) are their 24x24 upsampled scans. Generated deterministically from
``config.seed``; train canvases use training digits only, test canvases test digits
only. ``task="detection"`` gives each canvas its digits' boxes instead
(`cnn.detection.data`).
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from cnn.errors import ConfigError, unknown_choice

CANVAS_SOURCES = ("canvas", "canvas:mnist", "canvas:digits")
INK_FRACTION = 0.5           # a digit's pixel is labelled where ink >= half its maximum


def place_digits(digits: np.ndarray, classes: np.ndarray, count: int, *,
                 size: int = 64, min_digits: int = 1, max_digits: int = 3,
                 seed: int = 0, return_counts: bool = False):
  """`count` canvases (N, size, size, 1) uint8 and label maps (N, size, size) int32
  (and, with `return_counts`, the number of digits on each canvas, (N,) int32).

  Each canvas holds between `min_digits` and `max_digits` digits drawn from `digits`
  (M, h, w) uint8 with classes `classes`, at random positions whose boxes do not
  overlap (a digit that finds no free place after 100 tries is left out). Pixels
  of a digit with at least INK_FRACTION of its maximum ink get 1 + its class.
  """
  digits = np.asarray(digits)
  if digits.ndim == 4:
    digits = digits[..., 0]
  h, w = digits.shape[1:3]
  if h > size or w > size:
    raise ConfigError(f"Digits of {h}x{w} do not fit a {size}x{size} canvas; use "
                      f"data.canvas.size >= {max(h, w)}.")
  if not 1 <= min_digits <= max_digits:
    raise ConfigError(f"data.canvas.min_digits ({min_digits}) and max_digits "
                      f"({max_digits}) must satisfy 1 <= min <= max.")
  rng = np.random.default_rng(seed)
  images = np.zeros((count, size, size), np.uint8)
  labels = np.zeros((count, size, size), np.int32)
  counts = np.zeros(count, np.int32)
  peak = digits.reshape(len(digits), -1).max(1)
  for i in range(count):
    boxes: list[tuple[int, int]] = []
    for _ in range(rng.integers(min_digits, max_digits + 1)):
      for _ in range(100):
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        if all(abs(top - t) >= h or abs(left - l) >= w for t, l in boxes):
          boxes.append((top, left))
          break
    counts[i] = len(boxes)
    for top, left in boxes:
      j = rng.integers(len(digits))
      ink = digits[j]
      window = (slice(top, top + h), slice(left, left + w))
      images[i][window] = np.maximum(images[i][window], ink)
      on = ink.astype(np.float32) >= INK_FRACTION * max(int(peak[j]), 1)
      labels[i][window] = np.where(on, int(classes[j]) + 1, labels[i][window])
  if return_counts:
    return images[..., None], labels, counts
  return images[..., None], labels


MNIST_BOX = 20     # every MNIST digit's ink fits a 20x20 box


def ink_boxes(images: np.ndarray, box: int = MNIST_BOX) -> np.ndarray:
  """(N, box, box) windows of (N, H, W) digits centred on each digit's ink bounding
  box (clipped to the image), so a digit whose ink fits `box` is kept whole."""
  n, h, w = images.shape
  out = np.zeros((n, box, box), images.dtype)
  rows, cols = images.any(2), images.any(1)
  for i in range(n):
    r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
    if len(r) == 0:
      continue
    top = int(np.clip((r[0] + r[-1] + 1 - box) // 2, 0, h - box))
    left = int(np.clip((c[0] + c[-1] + 1 - box) // 2, 0, w - box))
    out[i] = images[i, top:top + box, left:left + box]
  return out


def canvas_digits(kind: str, data_dir: Optional[str]):
  """(train digits, train classes, test digits, test classes, name) for the canvas."""
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if kind == "canvas":
    root = pathlib.Path(data_dir or sources.data_root(None))
    kind = "canvas:mnist" if (root / "mnist").is_dir() else "canvas:digits"
  if kind == "canvas:mnist":
    ds = sources.load("mnist", data_dir=data_dir)
    crop = lambda x: ink_boxes(x[..., 0])
  else:
    ds = sources.load("digits")
    crop = lambda x: x[:, 4:28, 4:28, 0]     # the 24x24 digit in its 32x32 field
  return (crop(ds.train.x), np.asarray(ds.train.y), crop(ds.test.x), np.asarray(ds.test.y),
          kind)


# Image-level targets of the same canvases (deck 5's output heads).
CANVAS_TARGETS = ("multilabel", "count")


def canvas_targets(masks: np.ndarray, counts: np.ndarray, target: str) -> np.ndarray:
  """Image-level labels of canvases from their label maps and digit counts:
  "multilabel": which digit classes appear, (N, 10) int32 multi-hot; "count": how many
  digits, (N,) int32."""
  if target not in CANVAS_TARGETS:
    raise unknown_choice("canvas target", target, CANVAS_TARGETS)
  if target == "count":
    return np.asarray(counts, np.int32)
  return np.stack([(masks == c + 1).any(axis=(1, 2)) for c in range(10)],
                  axis=1).astype(np.int32)


def config_kwargs(config) -> dict:
  """The canvas arguments a config's ``data.canvas`` and ``data.data_dir`` name, as
  `load_canvas` (and `cnn.detection.data.load_detection`) take them."""
  c = config.data.canvas
  return dict(size=c.size, min_digits=c.min_digits, max_digits=c.max_digits,
              train_size=c.train_size, test_size=c.test_size, seed=c.seed,
              data_dir=config.data.data_dir)


def load_canvas(source: str = "canvas", *, size: int = 48, min_digits: int = 1,
                max_digits: int = 3, train_size: int = 6000, test_size: int = 500,
                seed: int = 0, data_dir: Optional[str] = None, target: str = "mask"):
  """The digit canvases as a cnn.data Dataset. `target` "mask": per-pixel label maps
  (segmentation, 11 classes); "multilabel" or "count": image-level labels of the same
  canvases (`canvas_targets`)."""
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if source not in CANVAS_SOURCES:
    raise unknown_choice("canvas source", source, CANVAS_SOURCES)
  if target != "mask" and target not in CANVAS_TARGETS:
    raise unknown_choice("canvas target", target, ("mask", *CANVAS_TARGETS))
  for what, n in (("train_size", train_size), ("test_size", test_size)):
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
      raise ConfigError(f"data.canvas.{what} must be a positive int, got {n!r}.")
  tx, ty, vx, vy, name = canvas_digits(source, data_dir)
  kw = dict(size=size, min_digits=min_digits, max_digits=max_digits, return_counts=True)
  splits = []
  # Separate streams so the test canvases do not change with train_size.
  for digits, classes, n, stream in ((tx, ty, train_size, 0), (vx, vy, test_size, 1)):
    images, masks, counts = place_digits(digits, classes, n, seed=seed * 2 + stream, **kw)
    labels = masks if target == "mask" else canvas_targets(masks, counts, target)
    splits.append(sources.Split(images, labels))
  mean, std = sources.channel_stats(splits[0])
  classes = {"mask": 11, "multilabel": 10, "count": 1}[target]
  task = {"mask": "segmentation", "multilabel": "multilabel", "count": "regression"}[target]
  return sources.Dataset(name=name if target == "mask" else f"{name} ({target})",
                         train=splits[0], eval=splits[1], test=splits[1],
                         num_classes=classes, mean=mean, std=std, task=task)
