"""Figures of the course's pictures from real runs: learned filters, feature maps, the
classic fixed kernels, a model's structure, segmentation predictions, augmentations.

Every function returns a matplotlib `Figure` (no pyplot: nothing global, works
without a display) whose size is fixed by its content, and `save` writes it as a
PNG at `DPI` without trimming, so the pixel size is known in advance:

    filters / feature maps   cols x rows tiles of CELL inches (at least MIN_WIDTH
                             wide), plus TITLE on top, cols = ceil(sqrt(n)),
                             rows = ceil(n / cols)
    kernels                  one row of WIDE-inch tiles, plus TITLE
    structure                BLOCK_W wide, one BLOCK_H row per block, plus TITLE
    segmentation             3 columns (image, truth, prediction) of WIDE-inch tiles
    augmentations            1 + one column per augmentation, one row per draw, of
                             CELL-inch tiles, plus TITLE

Filters are shown as the course's "learned filters" slide (Zeiler & Fergus): each
one rescaled to its own minimum..maximum, grey for one input channel, colour for
three (other counts: the mean over input channels).
"""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
CELL = 1.0        # inches per filter / feature-map tile
WIDE = 2.0        # inches per tile of the kernel and segmentation figures
TITLE = 0.6       # inches of title band (two lines)
MIN_WIDTH = 4.0   # inches: room for the title of a small grid
BLOCK_W, BLOCK_H = 6.0, 0.5
MAX_MAPS = 64     # feature maps shown at most


def grid(n: int) -> tuple[int, int]:
  """(rows, cols) of the tile grid for n tiles: cols = ceil(sqrt(n))."""
  cols = max(1, math.ceil(math.sqrt(n)))
  return max(1, math.ceil(n / cols)), cols


def pixel_size(fig: Figure) -> tuple[int, int]:
  """(width, height) in pixels of the PNG `save` writes."""
  w, h = fig.get_size_inches()
  return int(round(w * DPI)), int(round(h * DPI))


def save(fig: Figure, path: str | pathlib.Path) -> pathlib.Path:
  """Writes `fig` as a PNG at DPI (no trimming) and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=DPI, format="png")
  return path


def _unit(x: np.ndarray) -> np.ndarray:
  """x rescaled to 0..1 by its own range (a constant array becomes 0.5)."""
  x = np.asarray(x, np.float64)
  lo, hi = x.min(), x.max()
  return np.full_like(x, 0.5) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def _tiles(tiles: Sequence[np.ndarray], labels: Sequence[str], title: str,
           cmap: str = "gray") -> Figure:
  rows, cols = grid(len(tiles))
  fig = Figure(figsize=(max(cols * CELL, MIN_WIDTH), rows * CELL + TITLE))
  top = 1.0 - TITLE / (rows * CELL + TITLE)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=top, wspace=0.1,
                      hspace=0.3)
  for i in range(rows * cols):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.set_axis_off()
    if i < len(tiles):
      ax.imshow(tiles[i], cmap=cmap, interpolation="nearest",
                vmin=0.0 if tiles[i].ndim == 2 else None,
                vmax=1.0 if tiles[i].ndim == 2 else None)
      ax.set_title(labels[i], fontsize=7, pad=2)
  fig.suptitle(title, fontsize=10)
  return fig


def filter_images(kernel: np.ndarray) -> list[np.ndarray]:
  """One displayable image per filter of a (kh, kw, cin, cout) kernel, each on 0..1."""
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim != 4:
    raise ValueError(f"A convolution kernel has 4 axes (kh, kw, in, out), got "
                     f"shape {kernel.shape}.")
  out = []
  for f in range(kernel.shape[-1]):
    w = kernel[..., f]
    out.append(_unit(w) if w.shape[-1] == 3 else _unit(w.mean(-1)))
  return out


def filters_figure(kernel: np.ndarray, title: str = "first-layer filters") -> Figure:
  """The filters of a convolution as a grid of small images."""
  images = filter_images(kernel)
  kh, kw, cin, _ = np.shape(kernel)
  return _tiles(images, [f"{i}" for i in range(len(images))],
                f"{title}\n{len(images)} filters of {kh}x{kw}x{cin}")


def feature_maps_figure(image: np.ndarray, maps: np.ndarray,
                        title: str = "feature maps") -> Figure:
  """The input image (first tile) and each channel of `maps` (h, w, K), each scaled
  to its own range; at most MAX_MAPS channels."""
  maps = np.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f"Feature maps must be (height, width, channels), got {maps.shape}.")
  image = np.asarray(image, np.float64)
  shown = min(maps.shape[-1], MAX_MAPS)
  # The input in colour (RGB) or grey, so it is not mistaken for a feature map.
  first = _unit(image) if image.shape[-1] == 3 else np.repeat(
      _unit(image[..., 0])[..., None], 3, axis=-1)
  tiles = [first] + [_unit(maps[..., k]) for k in range(shown)]
  labels = ["input"] + [f"{k}" for k in range(shown)]
  more = f", first {shown} of {maps.shape[-1]}" if shown < maps.shape[-1] else ""
  return _tiles(tiles, labels, f"{title}\n{maps.shape[0]}x{maps.shape[1]}x"
                f"{maps.shape[-1]} maps{more}", cmap="viridis")


def kernels_figure(image: np.ndarray, outputs: Mapping[str, np.ndarray],
                   title: str = "fixed kernels") -> Figure:
  """A grey image and what each kernel makes of it, in one row. Outputs with
  negative values (edge detectors) use a grey scale centred on zero."""
  n = 1 + len(outputs)
  fig = Figure(figsize=(n * WIDE, WIDE + TITLE))
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02,
                      top=1.0 - TITLE / (WIDE + TITLE), wspace=0.08)
  panels = [("image", np.asarray(image, np.float64))] + [
      (k, np.asarray(v, np.float64)) for k, v in outputs.items()]
  for i, (name, x) in enumerate(panels):
    ax = fig.add_subplot(1, n, i + 1)
    ax.set_axis_off()
    if x.min() < 0:
      m = max(abs(x.min()), abs(x.max()), 1e-12)
      ax.imshow(x, cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
    else:
      ax.imshow(x, cmap="gray", interpolation="nearest")
    ax.set_title(name.replace("_", " "), fontsize=9)
  fig.suptitle(title, fontsize=10)
  return fig


# Colours of the block diagram by the kind of layer.
BLOCK_COLOURS = {"Input": "#dddddd", "conv": "#9ecae1", "pool": "#fdd0a2",
                 "dense": "#a1d99b", "norm": "#dadaeb", "other": "#f0f0f0"}


def _kind(layer_type: str) -> str:
  t = layer_type.lower()
  if t == "input":
    return "Input"
  for kind, words in (("conv", ("conv",)), ("pool", ("pool",)), ("dense", ("dense",)),
                      ("norm", ("norm", "lrn"))):
    if any(w in t for w in words):
      return kind
  return "other"


def structure_blocks(rows) -> list[dict]:
  """Rows of cnn.summary folded into blocks: in-place rows (activations, dropout,
  flatten) join the layer before them, as the slides draw "CONV + ReLU"."""
  blocks: list[dict] = []
  for r in rows:
    if r.in_place and blocks:
      blocks[-1]["extra"].append(r.layer_type.lower())
      continue
    blocks.append({"name": r.name, "type": r.layer_type, "shape": tuple(r.output_shape),
                   "params": r.params, "macs": r.macs, "extra": []})
  return blocks


def structure_figure(rows, title: str = "model") -> Figure:
  """A top-to-bottom block diagram of a cnn.summary row list, in execution order
  (skip connections and branches are not drawn)."""
  from cnn import summary  # pylint: disable=import-outside-toplevel
  blocks = structure_blocks(rows)
  height = len(blocks) * BLOCK_H + TITLE
  fig = Figure(figsize=(BLOCK_W, height))
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - TITLE / height))
  ax.set_xlim(0, BLOCK_W)
  ax.set_ylim(len(blocks) * BLOCK_H, 0)
  ax.set_axis_off()
  for i, b in enumerate(blocks):
    y = i * BLOCK_H
    ax.add_patch(_box(0.15, y + 0.06, BLOCK_W - 0.3, BLOCK_H - 0.16,
                      BLOCK_COLOURS[_kind(b["type"])]))
    extra = f" + {' + '.join(b['extra'])}" if b["extra"] else ""
    shape = "x".join(str(d) for d in b["shape"]) or "-"
    ax.text(0.3, y + BLOCK_H / 2 - 0.02, f"{b['name']}  ({b['type']}{extra})",
            va="center", fontsize=8)
    ax.text(BLOCK_W - 0.3, y + BLOCK_H / 2 - 0.02,
            f"{shape}   {b['params']:,} params", va="center", ha="right", fontsize=8)
    if i:
      ax.annotate("", xy=(BLOCK_W / 2, y + 0.06), xytext=(BLOCK_W / 2, y - 0.1),
                  arrowprops={"arrowstyle": "->", "lw": 0.8})
  t = summary.totals(rows)
  fig.suptitle(f"{title}: {t.params:,} parameters, {t.macs / 1e6:,.2f} M multiply-adds",
               fontsize=10)
  return fig


def _box(x, y, w, h, colour):
  from matplotlib.patches import FancyBboxPatch  # pylint: disable=import-outside-toplevel
  return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", facecolor=colour,
                        edgecolor="#555555", linewidth=0.8)


def label_colours(num_classes: int) -> mcolors.ListedColormap:
  """Class 0 black (background), the rest from tab10/tab20."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  base = colormaps["tab10" if num_classes <= 11 else "tab20"]
  colours = [(0.0, 0.0, 0.0, 1.0)] + [base(i % base.N) for i in range(num_classes - 1)]
  return mcolors.ListedColormap(colours)


def segmentation_figure(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray,
                        num_classes: int, title: str = "segmentation") -> Figure:
  """One row per example: the image, the true label map, the predicted one."""
  n = len(images)
  fig = Figure(figsize=(3 * WIDE, n * WIDE + TITLE))
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02,
                      top=1.0 - TITLE / (n * WIDE + TITLE), wspace=0.05, hspace=0.15)
  cmap = label_colours(num_classes)
  for i in range(n):
    image = np.asarray(images[i], np.float64)
    panels = [(_unit(image[..., 0]) if image.shape[-1] != 3 else _unit(image), "gray",
               "image"), (truths[i], cmap, "truth"), (predictions[i], cmap, "prediction")]
    for j, (x, cm, name) in enumerate(panels):
      ax = fig.add_subplot(n, 3, 3 * i + j + 1)
      ax.set_axis_off()
      kw = {"vmin": 0, "vmax": num_classes - 1} if j else {}
      ax.imshow(np.where(np.asarray(x) < 0, 0, x) if j else x, cmap=cm,
                interpolation="nearest", **kw)
      if i == 0:
        ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=10)
  return fig


def augmentations_figure(image: np.ndarray, outputs: Mapping[str, Sequence[np.ndarray]],
                         title: str = "augmentations") -> Figure:
  """The image (first column) and, per augmentation, one column of its random draws
  (one row each); images are grey (H, W) or RGB (H, W, 3) on 0..1, CELL-inch tiles."""
  draws = max(len(v) for v in outputs.values())
  cols = 1 + len(outputs)
  fig = Figure(figsize=(cols * CELL, draws * CELL + TITLE))
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                      top=1.0 - TITLE / (draws * CELL + TITLE), wspace=0.08, hspace=0.08)
  columns = [("image", [image])] + list(outputs.items())
  for j, (name, tiles) in enumerate(columns):
    for i in range(draws):
      ax = fig.add_subplot(draws, cols, i * cols + j + 1)
      ax.set_axis_off()
      if i < len(tiles):
        x = np.clip(np.asarray(tiles[i], np.float64), 0.0, 1.0)
        ax.imshow(x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x, cmap="gray",
                  vmin=0.0, vmax=1.0, interpolation="nearest")
      if i == 0:
        ax.set_title(name, fontsize=7, pad=2)
  fig.suptitle(title, fontsize=10)
  return fig
