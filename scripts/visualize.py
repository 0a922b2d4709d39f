"""Figures from runs and models (PNG, no display needed).

    python -m scripts.visualize filters --workdir W [--out docs/filters.png]
    python -m scripts.visualize features --workdir W --layer conv1 --image_index 0 \\
        --out docs/feature_maps.png
    python -m scripts.visualize kernels [--source auto|cifar10|mnist|digits] \\
        --out docs/kernels.png
    python -m scripts.visualize structure --model lenet5 [--input 32,32,1] \\
        --out docs/lenet5_structure.png          (or .md: the summary's markdown table)
    python -m scripts.visualize segmentation --workdir W --count 4 \\
        --out docs/segmentation.png
    python -m scripts.visualize augment [--source auto|cifar10|mnist|digits] \\
        [--augment rotate30,noise16,...] --out docs/augment/augmentations.png

filters: the first convolution's filters of a run's checkpoint (the course's "learned
filters" slide). features: the outputs of any layer (see `--layer list`) for one
image of the run's evaluation split. kernels: the course's box blur and edge
detector (cnn.layers.FIXED_KERNELS) on a real image (a CIFAR-10 test image when
../shared/data/cifar10 exists, else a digit). structure: the per-layer summary of
cnn.summary as a block diagram. segmentation: image, truth and prediction of a
segmentation run (config.task='segmentation') on its test canvases. detection: a
detection run's boxes on its test canvases, with the true ones. augment: deck 5's
augmentations (cnn/data/augment.py), three draws each on one real test image (a
CIFAR-10 one when on disk, else an inverted digit). The drawing is
cnn/visualize.py's (`draw_<command>`); curves of runs are `python -m scripts.plot`.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import exit_on_user_error

COMMANDS = ("filters", "features", "kernels", "structure", "segmentation", "detection",
            "augment")


def build_parser():
  parser = cli.parser("scripts.visualize", __doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  for name in COMMANDS:
    p = sub.add_parser(name)
    p.add_argument("--out", default=None, help="the PNG to write")
    if name in ("filters", "features", "segmentation", "detection"):
      p.add_argument("--workdir", required=True, help="a run's workdir")
      p.add_argument("--best", action="store_true", help="the best checkpoint")
    if name in ("features", "kernels", "segmentation", "detection", "augment"):
      p.add_argument("--image_index", type=int, default=0)
    if name == "features":
      p.add_argument("--layer", default="conv1",
                     help="module path such as conv1 or stage1_block0/conv1; 'list' "
                          "prints them")
    if name in ("kernels", "augment"):
      p.add_argument("--source", default="auto", help="auto, cifar10, mnist or digits")
      p.add_argument("--data_dir", default=None)
    if name == "augment":
      p.add_argument("--augment", default=None,
                     help="comma-separated data.augment names (default: deck 5's list)")
      p.add_argument("--draws", type=int, default=3, help="random draws, one per row")
    if name == "structure":
      p.add_argument("--model", default=None, help="a registered model name")
      p.add_argument("--workdir", default=None, help="or the model of a run")
      p.add_argument("--input", default=None, metavar="H,W,C")
      p.add_argument("--num_classes", type=int, default=None)
    if name in ("segmentation", "detection"):
      p.add_argument("--count", type=int, default=4 if name == "segmentation" else 8,
                     help="test canvases to draw")
    if name == "detection":
      p.add_argument("--min_score", type=float, default=0.5,
                     help="draw detections scoring at least this")
  return parser


def run(args) -> Optional[str]:
  """Draws what `args.command` asks for; returns the file written (or the layers)."""
  from cnn import visualize as v  # pylint: disable=import-outside-toplevel
  out = {"out": args.out} if args.out else {}
  if args.command == "filters":
    return v.draw_filters(args.workdir, best=args.best, **out)
  if args.command == "features":
    if args.layer == "list":
      return "\n".join(v.layer_names(args.workdir))
    return v.draw_features(args.workdir, layer=args.layer, image_index=args.image_index,
                           best=args.best, **out)
  if args.command == "kernels":
    return v.draw_kernels(source=args.source, image_index=args.image_index,
                          data_dir=args.data_dir, **out)
  if args.command == "structure":
    shape = cli.parse_shape(args.input) if args.input else None
    return v.draw_structure(args.out, model=args.model, workdir=args.workdir,
                            input_shape=shape, num_classes=args.num_classes)
  if args.command == "augment":
    names = [n for n in (args.augment or "").split(",") if n] or v.FIGURE_AUGMENTATIONS
    return v.draw_augment(names=names, source=args.source, image_index=args.image_index,
                          data_dir=args.data_dir, draws=args.draws, **out)
  if args.command == "detection":
    return v.draw_detection(args.workdir, count=args.count, image_index=args.image_index,
                            min_score=args.min_score, best=args.best, **out)
  return v.draw_segmentation(args.workdir, count=args.count,
                             image_index=args.image_index, best=args.best, **out)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, _ = cli.parse(build_parser(), argv, overrides=False)
  with exit_on_user_error():
    print(run(args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
