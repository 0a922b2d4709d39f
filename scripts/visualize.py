"""Figures from runs and models (PNG, no display needed).

    python -m scripts.visualize filters --workdir W [--out docs/filters.png]
    python -m scripts.visualize features --workdir W --layer conv1 --image-index 0 \\
        --out docs/feature_maps.png
    python -m scripts.visualize kernels [--source auto|cifar10|mnist|digits] \\
        --out docs/kernels.png
    python -m scripts.visualize structure --model lenet5 [--input 32,32,1] \\
        --out docs/lenet5_structure.png          (or .md: the summary's markdown table)
    python -m scripts.visualize segmentation --workdir W --count 4 \\
        --out docs/segmentation.png
    python -m scripts.visualize augment [--source auto|cifar10|mnist|digits] \\
        [--augment rotate30,translate4,...] --out docs/augment/augmentations.png

filters: the first convolution's filters of a run's checkpoint (the course's "learned
filters" slide). features: the outputs of any layer (see `--layer list`) for one
image of the run's evaluation split. kernels: the course's box blur and edge
detector (cnn.layers.FIXED_KERNELS) on a real image (a CIFAR-10 test image when
../shared/data/cifar10 exists, else a digit). structure: the per-layer summary of
cnn.summary as a block diagram. segmentation: image, truth and prediction of a
segmentation run (python -m cnn.segmentation) on its test canvases. augment: deck 5's
augmentations (cnn.data.augment), three draws each (a batch of copies, key 0) on one test
image, through the device functions the pipeline runs; a digit is shown as dark ink
on white paper (inverted) so that darkening (vignette, light) and the mean-colour fill
of crops show.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from cnn.errors import ConfigError, exit_on_user_error

KERNEL_SOURCES = ("auto", "cifar10", "mnist", "digits")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _restore(workdir: str, best: bool):
  from cnn import evaluation, segmentation  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(workdir)
  if segmentation.is_segmentation_run(path):
    return segmentation.restore_state(path, best=best)
  return evaluation.restore_state(path, best=best)


def first_conv(run, state) -> tuple[str, np.ndarray]:
  """(path, kernel) of the first convolution that runs."""
  from cnn import transfer  # pylint: disable=import-outside-toplevel
  params = state.params
  for path in transfer.module_paths(run.model, run.input_shape):
    node = params
    for part in path.split("/"):
      node = node.get(part, {}) if hasattr(node, "get") else {}
    kernel = node.get("kernel") if hasattr(node, "get") else None
    if kernel is not None and np.ndim(kernel) == 4:
      return path, np.asarray(kernel)
  raise ConfigError("This model has no convolution with a 4-D kernel to draw.")


def cmd_filters(args) -> pathlib.Path:
  from cnn import visualize  # pylint: disable=import-outside-toplevel
  run, state, step = _restore(args.workdir, args.best)
  name, kernel = first_conv(run, state)
  fig = visualize.filters_figure(
      kernel, f"{run.config.model.name} {name}, step {step}")
  return visualize.save(fig, args.out or "filters.png")


def eval_image(run, index: int) -> np.ndarray:
  """Image `index` of the run's evaluation split, normalised as the model sees it."""
  from cnn.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  split, ds = run.dataset.eval, run.dataset
  if not 0 <= index < len(split):
    raise ConfigError(f"--image-index {index} is outside the {len(split)} images of the "
                      f"evaluation split; use 0..{len(split) - 1}.")
  image = np.asarray(split.example(index)[0])[None]
  if run.out_size is not None:
    image = sources.pad_or_crop(image, run.out_size)
  return pipeline.normalize_np(image, ds.mean, ds.std)


def cmd_features(args) -> pathlib.Path:
  import jax  # pylint: disable=import-outside-toplevel
  from cnn import transfer, visualize  # pylint: disable=import-outside-toplevel
  run, state, _ = _restore(args.workdir, args.best)
  layers = transfer.module_paths(run.model, run.input_shape)
  if args.layer == "list":
    print("\n".join(layers))
    return None
  image = eval_image(run, args.image_index)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  maps = np.asarray(jax.jit(lambda v, x: transfer.capture(run.model, v, x, args.layer))(
      variables, image))
  if maps.ndim != 4:
    raise ConfigError(f"Layer {args.layer!r} outputs shape {maps.shape[1:]}, not feature "
                      "maps; pick a convolution or pooling layer (see --layer list).")
  label = run.dataset.eval.example(args.image_index)[1]
  what = f"label {int(label)}" if np.ndim(label) == 0 else "segmentation input"
  fig = visualize.feature_maps_figure(
      image[0], maps[0], f"{run.config.model.name} {args.layer} outputs, "
      f"eval image {args.image_index} ({what})")
  return visualize.save(fig, args.out or "feature_maps.png")


def kernel_image(source: str, index: int, data_dir: Optional[str] = None
                 ) -> tuple[np.ndarray, str]:
  """(grey image H x W in 0..1, description) from a real dataset's test split."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if source not in KERNEL_SOURCES:
    raise ConfigError(f"--source must be one of {', '.join(KERNEL_SOURCES)}, got "
                      f"{source!r}.")
  if source == "auto":
    root = pathlib.Path(data_dir or sources._data_root(None))  # pylint: disable=protected-access
    source = "cifar10" if (root / "cifar10").is_dir() else "digits"
  ds = data_lib.load(source, data_dir=data_dir, channels=1)
  if not 0 <= index < len(ds.test):
    raise ConfigError(f"--image-index {index} is outside the {len(ds.test)} test images "
                      f"of {source}; use 0..{len(ds.test) - 1}.")
  image, label = ds.test.example(index)
  name = CIFAR10_CLASSES[int(label)] if source == "cifar10" else f"digit {int(label)}"
  return np.asarray(image[..., 0], np.float32) / 255.0, f"{source} test image {index} " \
      f"({name})"


def cmd_kernels(args) -> pathlib.Path:
  from cnn import layers, visualize  # pylint: disable=import-outside-toplevel
  image, what = kernel_image(args.source, args.image_index, args.data_dir)
  outputs = {name: np.asarray(layers.apply_kernel(image[..., None], name))[..., 0]
             for name in layers.FIXED_KERNELS}
  fig = visualize.kernels_figure(image, outputs, f"the course's kernels on {what}")
  return visualize.save(fig, args.out or "kernels.png")


def cmd_structure(args) -> pathlib.Path:
  from cnn import models, summary, visualize  # pylint: disable=import-outside-toplevel
  from scripts.summary import parse_shape  # pylint: disable=import-outside-toplevel
  if args.workdir:
    run, _, _ = _restore(args.workdir, False)
    model, name, shape = run.model, run.config.model.name, run.input_shape[1:]
  else:
    if not args.model:
      raise ConfigError("structure needs --model NAME (or --workdir of a run).")
    name = args.model
    shape = models.info(name).input_shape if args.input is None else parse_shape(args.input)
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = models.create(name, **kwargs)
  rows = summary.summarize(model, shape)
  title = f"{name} on {'x'.join(map(str, shape))}"
  out = pathlib.Path(args.out or f"{name}_structure.png")
  if out.suffix == ".md":
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(summary.render(rows, "markdown", title=title))
    return out
  return visualize.save(visualize.structure_figure(rows, title), out)


def cmd_segmentation(args) -> pathlib.Path:
  from cnn import segmentation, visualize  # pylint: disable=import-outside-toplevel
  from cnn.data import pipeline  # pylint: disable=import-outside-toplevel
  if not segmentation.is_segmentation_run(args.workdir):
    raise ConfigError(f"{args.workdir} is not a segmentation run; train one with "
                      "python -m cnn.segmentation.")
  run, state, step = segmentation.restore_state(args.workdir, best=args.best)
  split, ds = run.dataset.eval, run.dataset
  if args.count <= 0:
    raise ConfigError(f"--count must be positive, got {args.count}.")
  index = np.arange(args.image_index, min(args.image_index + args.count, len(split)))
  if len(index) == 0:
    raise ConfigError(f"--image-index {args.image_index} is outside the {len(split)} "
                      "evaluation images.")
  images = pipeline.normalize_np(split.x[index], ds.mean, ds.std)
  predictions = segmentation.predict(run, state, images)
  fig = visualize.segmentation_figure(
      split.x[index], split.y[index], predictions, ds.num_classes,
      f"{run.config.model.name} after {step} steps ({ds.name})")
  return visualize.save(fig, args.out or "segmentation.png")


# Deck 5's list, strong enough to be seen on a 32x32 image.
FIGURE_AUGMENTATIONS = ("rotate30", "translate4", "flip", "skew20", "crop4", "noise16",
                        "light40", "vignette80", "perspective40")


def augment_image(source: str, index: int, data_dir: Optional[str] = None
                  ) -> tuple[np.ndarray, str]:
  """(uint8 image H x W x C, description) of a real test image: CIFAR-10 in colour
  when ../shared/data/cifar10 exists (source auto), else a digit, inverted."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  from cnn.data import sources  # pylint: disable=import-outside-toplevel
  if source not in KERNEL_SOURCES:
    raise ConfigError(f"--source must be one of {', '.join(KERNEL_SOURCES)}, got "
                      f"{source!r}.")
  if source == "auto":
    root = pathlib.Path(data_dir or sources._data_root(None))  # pylint: disable=protected-access
    source = "cifar10" if (root / "cifar10").is_dir() else "digits"
  ds = data_lib.load(source, data_dir=data_dir)
  if not 0 <= index < len(ds.test):
    raise ConfigError(f"--image-index {index} is outside the {len(ds.test)} test images "
                      f"of {source}; use 0..{len(ds.test) - 1}.")
  image, label = ds.test.example(index)
  image = np.asarray(image, np.uint8)
  if source == "cifar10":
    return image, f"CIFAR-10 test image {index} ({CIFAR10_CLASSES[int(label)]})"
  return 255 - image, f"{source} test image {index} (digit {int(label)}, inverted)"


def augment_examples(image: np.ndarray, names: Sequence[str], draws: int = 3
                     ) -> dict[str, list[np.ndarray]]:
  """{name: [image in 0..1 after draw k, k < draws]}: `cnn.data.augment.get(name)` on
  the image normalised by its own mean colour (so crops fill with it, as training
  fills with the dataset's), key k, out_size the image's."""
  import jax  # pylint: disable=import-outside-toplevel
  from cnn.data import augment  # pylint: disable=import-outside-toplevel
  pixels = image.astype(np.float32) / 255.0
  mean = pixels.mean((0, 1))
  std = np.ones_like(mean)
  batch = np.repeat((pixels - mean)[None], draws, axis=0)
  out = {}
  for name in names:
    fn = augment.get(name, mean=mean, std=std)
    # One batch of copies, each copy its own draw: the rows of the figure.
    result, _ = jax.jit(lambda x, f=fn: f(jax.random.key(0), x, None, image.shape[:2]))(
        batch)
    out[name] = [np.asarray(r) * std + mean for r in result]
  return out


def cmd_augment(args) -> pathlib.Path:
  from cnn import visualize  # pylint: disable=import-outside-toplevel
  image, what = augment_image(args.source, args.image_index, args.data_dir)
  names = [n for n in args.augment.split(",") if n] if args.augment else \
      list(FIGURE_AUGMENTATIONS)
  if args.draws <= 0:
    raise ConfigError(f"--draws must be positive, got {args.draws}.")
  outputs = augment_examples(image, names, args.draws)
  fig = visualize.augmentations_figure(image.astype(np.float32) / 255.0, outputs,
                                       f"deck 5's augmentations (data.augment) on {what}")
  return visualize.save(fig, args.out or "augmentations.png")


COMMANDS = {"filters": cmd_filters, "features": cmd_features, "kernels": cmd_kernels,
            "structure": cmd_structure, "segmentation": cmd_segmentation,
            "augment": cmd_augment}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m scripts.visualize", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name in COMMANDS:
    p = sub.add_parser(name)
    p.add_argument("--out", default=None, help="the PNG to write")
    if name in ("filters", "features", "segmentation"):
      p.add_argument("--workdir", required=True, help="a run's workdir")
      p.add_argument("--best", action="store_true", help="the best checkpoint")
    if name in ("features", "kernels", "segmentation", "augment"):
      p.add_argument("--image-index", type=int, default=0)
    if name == "features":
      p.add_argument("--layer", default="conv1",
                     help="module path such as conv1 or stage1_block0/conv1; 'list' "
                          "prints them")
    if name in ("kernels", "augment"):
      p.add_argument("--source", default="auto", help="auto, cifar10, mnist or digits")
      p.add_argument("--data-dir", default=None)
    if name == "augment":
      p.add_argument("--augment", default=None,
                     help="comma-separated data.augment names (default: deck 5's list)")
      p.add_argument("--draws", type=int, default=3, help="random draws, one per row")
    if name == "structure":
      p.add_argument("--model", default=None, help="a registered model name")
      p.add_argument("--workdir", default=None, help="or the model of a run")
      p.add_argument("--input", default=None, metavar="H,W,C")
      p.add_argument("--num_classes", type=int, default=None)
    if name == "segmentation":
      p.add_argument("--count", type=int, default=4, help="examples, one per row")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  with exit_on_user_error():
    out = COMMANDS[args.command](args)
  if out is not None:
    print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
