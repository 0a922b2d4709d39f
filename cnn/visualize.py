"""Figures of the course's pictures from real runs: learned filters, feature maps, the
classic fixed kernels, a model's structure, segmentation predictions, deck 5's
augmentations; and the training curves of any set of runs (`curves_figure`).

The `*_figure` functions draw arrays; `draw_filters`, `draw_features`, `draw_kernels`,
`draw_structure`, `draw_segmentation` and `draw_augment` read a run's workdir (or a
model name or a dataset), draw and write the file: they are the commands of
scripts/visualize.py.

Every function returns a matplotlib `Figure` (no pyplot: nothing global, works
without a display) whose size is fixed by its content, and `save` writes it as a
PNG at `DPI` without trimming, so the pixel size is known in advance:

    filters / feature maps   cols x rows tiles of CELL inches (at least MIN_WIDTH
                             wide), plus TITLE on top, cols = ceil(sqrt(n)),
                             rows = ceil(n / cols)
    kernels                  one row of WIDE-inch tiles, plus TITLE
    structure                BLOCK_W wide, one BLOCK_H row per block, plus TITLE
    segmentation             3 columns (image, truth, prediction) of WIDE-inch tiles
    curves                   one CURVE_W x CURVE_H panel per metric
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
CURVE_W, CURVE_H = 5.0, 3.6
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
  """Writes `fig` at DPI (no trimming) and returns the path: a PDF or SVG when the
  path says so, else a PNG."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  kind = path.suffix.lower().lstrip(".")
  fig.savefig(path, dpi=DPI, format=kind if kind in ("pdf", "svg") else "png")
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


def detection_figure(images: np.ndarray, truths: np.ndarray, detections: np.ndarray,
                     title: str = "detection", min_score: float = 0.5,
                     columns: int = 4) -> Figure:
  """Canvases with their true boxes (dashed white) and the detections scoring at least
  `min_score` (solid, coloured by class, labelled "class score").

  `truths` rows are (x1, y1, x2, y2, class), `detections` rows (x1, y1, x2, y2,
  score, class); rows with class < 0 are padding.
  """
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  from matplotlib.patches import Rectangle  # pylint: disable=import-outside-toplevel
  n = len(images)
  rows, cols = -(-n // columns), min(n, columns)
  fig = Figure(figsize=(cols * WIDE, rows * WIDE + TITLE))
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                      top=1.0 - TITLE / (rows * WIDE + TITLE), wspace=0.04, hspace=0.04)
  palette = colormaps["tab10"]
  for i in range(n):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.set_axis_off()
    image = np.asarray(images[i], np.float64)
    ax.imshow(_unit(image[..., 0]), cmap="gray", interpolation="nearest")
    # Boxes are in pixel-edge coordinates; imshow puts pixel centres at integers.
    for x1, y1, x2, y2, cls in np.asarray(truths[i]):
      if cls >= 0:
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                               edgecolor="white", linestyle="--", linewidth=0.8))
    for x1, y1, x2, y2, score, cls in np.asarray(detections[i]):
      if cls >= 0 and score >= min_score:
        colour = palette(int(cls) % 10)
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                               edgecolor=colour, linewidth=1.4))
        ax.text(x1 - 0.5, y1 - 1.0, f"{int(cls)} {score:.2f}", color="black", fontsize=7,
                va="bottom", bbox=dict(facecolor=colour, edgecolor="none", pad=0.6))
  fig.suptitle(title, fontsize=10)
  return fig


# ----------------------------------------------------------------------------------
# Training curves of any runs (cnn.runs records)
# ----------------------------------------------------------------------------------

def curves_figure(curves: Sequence[tuple[str, Mapping[str, tuple[Sequence[int],
                                                                 Sequence[float]]]]],
                  metrics: Sequence[str], *, log_y: bool = False,
                  title: str = "") -> Figure:
  """One panel per metric, one line per curve against the step.

  Args:
    curves: (label, {metric: (steps, values)}) per line, e.g. one run or the mean of
      one setting's seeds (see `cnn.runs.series` and `cnn.runs.mean_curve`).
    metrics: the panels, in order; a line without a metric is left out of its panel.
    log_y: logarithmic y axes (losses, gradient norms).
    title: the figure's title.
  """
  fig = Figure(figsize=(CURVE_W * len(metrics), CURVE_H + (TITLE if title else 0)))
  for i, metric in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    for j, (label, by_metric) in enumerate(curves):
      steps, values = by_metric.get(metric, ((), ()))
      if len(steps):
        ax.plot(steps, values, color=f"C{j % 10}", linewidth=1.4, label=label,
                marker="o" if len(steps) < 30 else None, markersize=3)
    if log_y:
      ax.set_yscale("log")
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8, loc="best")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def runs_curves(paths: Sequence[str | pathlib.Path], metrics: Sequence[str], *,
                mean_seeds: bool = False) -> list[tuple[str, dict]]:
  """The curves `curves_figure` draws for the runs under `paths` (workdirs or sweep
  roots): one per run, or with `mean_seeds` one per setting, the mean over its seeds
  at the steps they all logged. A metric no run logged is a ConfigError that lists
  the logged ones."""
  from cnn import runs as runs_lib  # pylint: disable=import-outside-toplevel
  from cnn.errors import ConfigError  # pylint: disable=import-outside-toplevel
  found = runs_lib.load(paths)
  logged = runs_lib.keys(found)
  missing = [m for m in metrics if m not in logged]
  if missing:
    raise ConfigError(f"No run logged {', '.join(missing)}; the runs logged: "
                      f"{', '.join(logged) or 'nothing yet'}.")
  names = runs_lib.labels(found)
  if not mean_seeds:
    return [(name, {m: runs_lib.series(r, m) for m in metrics})
            for name, r in zip(names, found)]
  label_of = {id(r): name for name, r in zip(names, found)}
  curves = []
  for members in runs_lib.group(found):
    label = label_of[id(members[0])]
    if len(members) > 1:
      label += f" (mean of {len(members)} seeds)"
    curves.append((label, {m: runs_lib.mean_curve(members, m) for m in metrics}))
  return curves


# ----------------------------------------------------------------------------------
# From a workdir, a model name or a dataset to a file (scripts/visualize.py)
# ----------------------------------------------------------------------------------

KERNEL_SOURCES = ("auto", "cifar10", "mnist", "digits")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _restore(workdir: str | pathlib.Path, best: bool = False):
  from cnn import evaluation  # pylint: disable=import-outside-toplevel
  return evaluation.restore_state(pathlib.Path(workdir), best=best)


def _error(message: str):
  from cnn.errors import ConfigError  # pylint: disable=import-outside-toplevel
  return ConfigError(message)


def first_conv(run, state) -> tuple[str, np.ndarray]:
  """(path, kernel) of the first convolution that runs."""
  from cnn import transfer  # pylint: disable=import-outside-toplevel
  for path in transfer.module_paths(run.model, run.input_shape):
    node = state.params
    for part in path.split("/"):
      node = node.get(part, {}) if hasattr(node, "get") else {}
    kernel = node.get("kernel") if hasattr(node, "get") else None
    if kernel is not None and np.ndim(kernel) == 4:
      return path, np.asarray(kernel)
  raise _error("This model has no convolution with a 4-D kernel to draw.")


def draw_filters(workdir, out="filters.png", *, best: bool = False) -> pathlib.Path:
  """The first convolution's filters of a run's checkpoint."""
  run, state, step = _restore(workdir, best)
  name, kernel = first_conv(run, state)
  return save(filters_figure(kernel, f"{run.config.model.name} {name}, step {step}"), out)


def layer_names(workdir) -> list[str]:
  """The module paths of a run's model, in execution order (for --layer)."""
  from cnn import transfer  # pylint: disable=import-outside-toplevel
  run, _, _ = _restore(workdir)
  return transfer.module_paths(run.model, run.input_shape)


def eval_image(run, index: int) -> np.ndarray:
  """Image `index` of the run's evaluation split, normalised as the model sees it."""
  from cnn.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  split, ds = run.dataset.eval, run.dataset
  if not 0 <= index < len(split):
    raise _error(f"--image_index {index} is outside the {len(split)} images of the "
                 f"evaluation split; use 0..{len(split) - 1}.")
  image = np.asarray(split.example(index)[0])[None]
  if run.out_size is not None:
    image = sources.pad_or_crop(image, run.out_size)
  return pipeline.normalize_np(image, ds.mean, ds.std)


def draw_features(workdir, out="feature_maps.png", *, layer: str = "conv1",
                  image_index: int = 0, best: bool = False) -> pathlib.Path:
  """The outputs of `layer` for one image of the run's evaluation split."""
  import jax  # pylint: disable=import-outside-toplevel
  from cnn import transfer  # pylint: disable=import-outside-toplevel
  run, state, _ = _restore(workdir, best)
  image = eval_image(run, image_index)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  maps = np.asarray(jax.jit(lambda v, x: transfer.capture(run.model, v, x, layer))(
      variables, image))
  if maps.ndim != 4:
    raise _error(f"Layer {layer!r} outputs shape {maps.shape[1:]}, not feature maps; "
                 "pick a convolution or pooling layer (see --layer list).")
  label = run.dataset.eval.example(image_index)[1]
  what = f"label {int(label)}" if np.ndim(label) == 0 else "segmentation input"
  fig = feature_maps_figure(image[0], maps[0], f"{run.config.model.name} {layer} "
                            f"outputs, eval image {image_index} ({what})")
  return save(fig, out)


def kernel_image(source: str, index: int, data_dir: str | None = None
                 ) -> tuple[np.ndarray, str]:
  """(grey image H x W in 0..1, description) from a real dataset's test split."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if source not in KERNEL_SOURCES:
    raise _error(f"--source must be one of {', '.join(KERNEL_SOURCES)}, got {source!r}.")
  if source == "auto":   # CIFAR-10 when it is on disk: a photo shows the kernels best
    root = pathlib.Path(data_dir or sources._data_root(None))  # pylint: disable=protected-access
    source = "cifar10" if (root / "cifar10").is_dir() else "digits"
  ds = data_lib.load(source, data_dir=data_dir, channels=1)
  if not 0 <= index < len(ds.test):
    raise _error(f"--image_index {index} is outside the {len(ds.test)} test images of "
                 f"{source}; use 0..{len(ds.test) - 1}.")
  image, label = ds.test.example(index)
  name = CIFAR10_CLASSES[int(label)] if source == "cifar10" else f"digit {int(label)}"
  return (np.asarray(image[..., 0], np.float32) / 255.0,
          f"{source} test image {index} ({name})")


def draw_kernels(out="kernels.png", *, source: str = "auto", image_index: int = 0,
                 data_dir: str | None = None) -> pathlib.Path:
  """The course's box blur and edge detector on a real image."""
  from cnn import layers  # pylint: disable=import-outside-toplevel
  image, what = kernel_image(source, image_index, data_dir)
  outputs = {name: np.asarray(layers.apply_kernel(image[..., None], name))[..., 0]
             for name in layers.FIXED_KERNELS}
  return save(kernels_figure(image, outputs, f"the course's kernels on {what}"), out)


def augmentations_figure(image: np.ndarray, outputs: Mapping[str, Sequence[np.ndarray]],
                         title: str = "augmentations") -> Figure:
  """The image (first column) and, per augmentation, one column of its random draws
  (one row each); images are (H, W, 1) grey or (H, W, 3) RGB on 0..1, CELL-inch tiles."""
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
        ax.imshow(x[..., 0] if x.shape[-1] == 1 else x, cmap="gray", vmin=0.0,
                  vmax=1.0, interpolation="nearest")
      if i == 0:
        ax.set_title(name, fontsize=7, pad=2)
  fig.suptitle(title, fontsize=10)
  return fig


# Deck 5's list, strong enough to be seen on a 32x32 image.
FIGURE_AUGMENTATIONS = ("rotate30", "translate4", "flip", "skew20", "crop4", "noise16",
                        "light40", "vignette80", "perspective40")


def augment_image(source: str, index: int, data_dir: str | None = None
                  ) -> tuple[np.ndarray, str]:
  """(uint8 image H x W x C, description) of a real test image: CIFAR-10 in colour
  when it is on disk (source auto), else a digit, inverted to dark ink on white so
  that darkening (vignette, light) and the mean-colour fill of crops show."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if source not in KERNEL_SOURCES:
    raise _error(f"--source must be one of {', '.join(KERNEL_SOURCES)}, got {source!r}.")
  if source == "auto":
    root = pathlib.Path(data_dir or sources._data_root(None))  # pylint: disable=protected-access
    source = "cifar10" if (root / "cifar10").is_dir() else "digits"
  ds = data_lib.load(source, data_dir=data_dir)
  if not 0 <= index < len(ds.test):
    raise _error(f"--image_index {index} is outside the {len(ds.test)} test images of "
                 f"{source}; use 0..{len(ds.test) - 1}.")
  image, label = ds.test.example(index)
  image = np.asarray(image, np.uint8)
  if source == "cifar10":
    return image, f"CIFAR-10 test image {index} ({CIFAR10_CLASSES[int(label)]})"
  return 255 - image, f"{source} test image {index} (digit {int(label)}, inverted)"


def augment_examples(image: np.ndarray, names: Sequence[str], draws: int = 3
                     ) -> dict[str, list[np.ndarray]]:
  """{name: [the image in 0..1 after draw k, k < draws]}: `cnn.data.augment.get(name)`,
  as the pipeline runs it, on a batch of `draws` copies (key 0, one draw per copy),
  normalised by the image's own mean colour (crops fill with it, as training fills
  with the dataset's)."""
  import jax  # pylint: disable=import-outside-toplevel
  from cnn.data import augment  # pylint: disable=import-outside-toplevel
  pixels = image.astype(np.float32) / 255.0
  mean = pixels.mean((0, 1))
  std = np.ones_like(mean)
  batch = np.repeat((pixels - mean)[None], draws, axis=0)
  out = {}
  for name in names:
    fn = augment.get(name, mean=mean, std=std)
    result, _ = jax.jit(lambda x, f=fn: f(jax.random.key(0), x, None, image.shape[:2]))(
        batch)
    out[name] = [np.asarray(r) * std + mean for r in result]
  return out


def draw_augment(out="augmentations.png", *, names: Sequence[str] = FIGURE_AUGMENTATIONS,
                 source: str = "auto", image_index: int = 0, data_dir: str | None = None,
                 draws: int = 3) -> pathlib.Path:
  """Deck 5's augmentations (cnn/data/augment.py), `draws` of each, on one real image."""
  if draws <= 0:
    raise _error(f"--draws must be positive, got {draws}.")
  image, what = augment_image(source, image_index, data_dir)
  outputs = augment_examples(image, names, draws)
  return save(augmentations_figure(image.astype(np.float32) / 255.0, outputs,
                                   f"deck 5's augmentations (data.augment) on {what}"), out)


def draw_structure(out=None, *, model: str | None = None, workdir=None,
                   input_shape: Sequence[int] | None = None,
                   num_classes: int | None = None) -> pathlib.Path:
  """The per-layer summary of a registered model (or a run's) as a block diagram, or
  as the summary's Markdown table when `out` ends in .md."""
  from cnn import models, summary  # pylint: disable=import-outside-toplevel
  if workdir:
    run, _, _ = _restore(workdir)
    net, name, shape = run.model, run.config.model.name, run.input_shape[1:]
  else:
    if not model:
      raise _error("structure needs --model NAME (or --workdir of a run).")
    name = model
    shape = tuple(input_shape) if input_shape else models.info(name).input_shape
    net = models.create(name, **({"num_classes": num_classes} if num_classes else {}))
  rows = summary.summarize(net, shape)
  title = f"{name} on {'x'.join(map(str, shape))}"
  out = pathlib.Path(out or f"{name}_structure.png")
  if out.suffix == ".md":
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(summary.render(rows, "markdown", title=title))
    return out
  return save(structure_figure(rows, title), out)


def _run_examples(workdir, task: str, experiment: str, count: int, image_index: int,
                  best: bool):
  """(run, state, step, index, normalised images) of `count` evaluation examples of a
  `task` run from `image_index` on; one sentence for another task's run or bad range."""
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  from cnn.data import pipeline  # pylint: disable=import-outside-toplevel
  found = config_lib.load_saved(workdir).task
  if found != task:
    raise _error(f"{workdir} is not a {task} run (task {found!r}); train one with "
                 f"python -m scripts.train --config {experiment}.")
  if count <= 0:
    raise _error(f"--count must be positive, got {count}.")
  run, state, step = _restore(workdir, best)
  split, ds = run.dataset.eval, run.dataset
  index = np.arange(image_index, min(image_index + count, len(split)))
  if len(index) == 0:
    raise _error(f"--image_index {image_index} is outside the {len(split)} evaluation "
                 "images.")
  return run, state, step, index, pipeline.normalize_np(split.x[index], ds.mean, ds.std)


def draw_segmentation(workdir, out="segmentation.png", *, count: int = 4,
                      image_index: int = 0, best: bool = False) -> pathlib.Path:
  """Image, truth and prediction of a segmentation run on `count` test canvases."""
  from cnn import segmentation  # pylint: disable=import-outside-toplevel
  run, state, step, index, images = _run_examples(
      workdir, "segmentation", "experiments/segmentation_digits.py", count, image_index,
      best)
  split, ds = run.dataset.eval, run.dataset
  predictions = segmentation.predict(run, state, images)
  fig = segmentation_figure(split.x[index], split.y[index], predictions, ds.num_classes,
                            f"{run.config.model.name} after {step} steps ({ds.name})")
  return save(fig, out)


def draw_detection(workdir, out="detection.png", *, count: int = 8, image_index: int = 0,
                   min_score: float = 0.5, best: bool = False) -> pathlib.Path:
  """True and predicted boxes of a detection run on `count` test canvases."""
  import jax  # pylint: disable=import-outside-toplevel
  from cnn import tasks  # pylint: disable=import-outside-toplevel
  run, state, step, index, images = _run_examples(
      workdir, "detection", "experiments/detection_digits.py", count, image_index, best)
  split, ds = run.dataset.eval, run.dataset
  task = tasks.get("detection")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  detections = np.asarray(jax.jit(lambda v, x: task.predict(run.model, v, x))(
      variables, images))
  fig = detection_figure(
      split.x[index], split.y[index], detections,
      f"{run.config.model.name} after {step} steps on test canvases ({ds.name})\n"
      f"dashed: truth; solid: detections scoring >= {min_score:g}", min_score)
  return save(fig, out)
