"""Per-layer summary of a model of the zoo: shape, parameters, MACs, activations.

    python -m scripts.summary vgg16
    python -m scripts.summary resnet50 --input 160,160,3 --num_classes 10
    python -m scripts.summary mobilenet_v1 --format markdown >> docs/models.md

One row per layer in execution order (see cnn/summary.py for what each column counts),
then the totals: parameters, multiply-adds, and forward activation memory per image
as on the course's VGG slide. The model is traced, never run, so ImageNet models take
a second or two and no memory. A mistake (unknown model, too small an input) prints
one sentence and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from cnn import cli
from cnn import models
from cnn.cli import parse_shape
from cnn.errors import ConfigError, exit_on_user_error
from cnn.summary import FORMATS, render, summarize_registered


def build_parser() -> argparse.ArgumentParser:
  parser = cli.parser("scripts.summary", __doc__)
  parser.add_argument("model", help="a registered model name (e.g. vgg16, resnet50)")
  parser.add_argument("--input", default=None, metavar="H,W,C",
                      help="input shape per image (default: the model's registered one)")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="outputs of the last layer (default: the model's own)")
  parser.add_argument("--format", default="table", choices=FORMATS,
                      help="table (default), markdown (for docs), csv or json")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, _ = cli.parse(build_parser(), argv, overrides=False)
  with exit_on_user_error():
    info = models.info(args.model)
    shape = info.input_shape if args.input is None else parse_shape(args.input)
    kwargs = {}
    if args.num_classes is not None:
      if args.num_classes <= 0:
        raise ConfigError(f"--num_classes must be positive, got {args.num_classes}.")
      kwargs["num_classes"] = args.num_classes
    rows = summarize_registered(args.model, shape, **kwargs)
    title = f"{args.model} on {'x'.join(map(str, shape))} input, per image"
    sys.stdout.write(render(rows, args.format, title=title))
  return 0


if __name__ == "__main__":
  sys.exit(main())
