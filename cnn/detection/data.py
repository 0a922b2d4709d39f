"""The offline detection task: real digits pasted at random scales on a canvas.

Built from the same digits as the segmentation canvases (`cnn.data.canvas`: MNIST
cut to its 20x20 ink box, or scikit-learn's 24x24 digits without MNIST): each canvas
holds `min_digits` to `max_digits` digits, each resized (bilinearly, from its square
crop) to a side drawn uniformly from SCALES times the crop's side, at random places
whose windows do not overlap (a digit with no free place after 100 tries is left
out). Its box is the bounding box of the pixels with at least INK_FRACTION of its
maximum ink (the pixels the segmentation task labels), right/bottom edges exclusive.

Labels are int32 (N, max_digits, 5) rows (x1, y1, x2, y2, class) in pixels, padding
rows all -1. Train canvases use training digits only, test canvases test digits only;
everything is a pure function of the seed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from cnn.data import sources
from cnn.data.canvas import CANVAS_SOURCES, INK_FRACTION, canvas_digits
from cnn.errors import ConfigError, unknown_choice

SCALES = (0.6, 1.5)         # digit side / crop side (MNIST: 12 to 30 pixels)
NUM_CLASSES = 10


def digit_box(ink: np.ndarray) -> tuple[int, int, int, int]:
  """(x1, y1, x2, y2) of the pixels of `ink` (h, w) with >= INK_FRACTION of its max."""
  on = ink.astype(np.float32) >= INK_FRACTION * max(int(ink.max()), 1)
  rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def resize_digit(digit: np.ndarray, side: int) -> np.ndarray:
  """A (h, w) uint8 digit resized to (side, side) bilinearly (antialiased)."""
  x = digit.astype(np.float32)[None, :, :, None]
  y = sources.resize_bilinear(x, (side, side))[0, :, :, 0]
  return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def paste_digits(digits: np.ndarray, classes: np.ndarray, count: int, *, size: int = 64,
                 min_digits: int = 1, max_digits: int = 3, scales=SCALES,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` canvases (N, size, size, 1) uint8 and their boxes (N, max_digits, 5).

  Args:
    digits: (M, h, w) uint8 square crops with classes (M,).
    count: canvases to make.
    size: canvas side.
    min_digits, max_digits: digits tried per canvas.
    scales: (low, high) digit side relative to the crop side.
    seed: the generator's seed.
  """
  digits = np.asarray(digits)
  if digits.ndim == 4:
    digits = digits[..., 0]
  crop = digits.shape[1]
  low, high = (max(4, int(round(s * crop))) for s in scales)
  if high > size:
    raise ConfigError(f"Digits up to {high}x{high} do not fit a {size}x{size} canvas; use "
                      f"data.canvas.size >= {high}.")
  if not 1 <= min_digits <= max_digits:
    raise ConfigError(f"data.canvas.min_digits ({min_digits}) and max_digits "
                      f"({max_digits}) must satisfy 1 <= min <= max.")
  rng = np.random.default_rng(seed)
  images = np.zeros((count, size, size), np.uint8)
  labels = np.full((count, max_digits, 5), -1, np.int32)
  for i in range(count):
    windows: list[tuple[int, int, int]] = []           # (top, left, side)
    for _ in range(rng.integers(min_digits, max_digits + 1)):
      side = int(rng.integers(low, high + 1))
      for _ in range(100):
        top, left = rng.integers(0, size - side + 1, 2)
        if all(top >= t + s or t >= top + side or left >= l + s or l >= left + side
               for t, l, s in windows):
          windows.append((int(top), int(left), side))
          break
    for k, (top, left, side) in enumerate(windows):
      j = rng.integers(len(digits))
      ink = resize_digit(digits[j], side)
      window = images[i, top:top + side, left:left + side]
      np.maximum(window, ink, out=window)
      x1, y1, x2, y2 = digit_box(ink)
      labels[i, k] = (left + x1, top + y1, left + x2, top + y2, int(classes[j]))
  return images[..., None], labels


def load_detection(source: str = "canvas", *, size: int = 64, min_digits: int = 1,
                   max_digits: int = 3, train_size: int = 6000, test_size: int = 500,
                   seed: int = 0, data_dir: Optional[str] = None) -> sources.Dataset:
  """The digit-canvas detection task as a cnn.data Dataset (10 classes)."""
  if source not in CANVAS_SOURCES:
    raise unknown_choice("detection data source", source, CANVAS_SOURCES)
  for what, n in (("train_size", train_size), ("test_size", test_size)):
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
      raise ConfigError(f"data.canvas.{what} must be a positive int, got {n!r}.")
  tx, ty, vx, vy, name = canvas_digits(source, data_dir)
  kw = dict(size=size, min_digits=min_digits, max_digits=max_digits)
  # Separate streams so the test canvases do not change with train_size.
  train = sources.Split(*paste_digits(tx, ty, train_size, seed=seed * 2 + 0, **kw))
  test = sources.Split(*paste_digits(vx, vy, test_size, seed=seed * 2 + 1, **kw))
  mean, std = sources.channel_stats(train)
  return sources.Dataset(name=f"{name}:boxes", train=train, eval=test, test=test,
                         num_classes=NUM_CLASSES, mean=mean, std=std, task="detection")
