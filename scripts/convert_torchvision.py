"""Convert torchvision ImageNet weights (a .pth you downloaded) into a run directory.

    python -m scripts.convert_torchvision --name resnet18 --weights resnet18.pth \\
        --workdir runs/resnet18_imagenet [--num_classes N]

The workdir gets what a run of the engine writes (config.json, an orbax checkpoint at
step 0), so a fine-tuning config starts from it with
``--config.transfer.init_from=runs/resnet18_imagenet``, and ``scripts.evaluate``
evaluates it on the config's data. --config (default experiments/imagenet.py) is the
run the weights belong to: its data (tfds:imagenet2012; set --config.data.data_dir)
and recipe; its model section is replaced by the converted model. --num_classes other
than 1000 gives a new head, initialised afresh. Supported names: see cnn/pretrained.py.
Reading a .pth file needs PyTorch (pip install torch==2.13.0); nothing is downloaded.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import exit_on_user_error

DEFAULT_CONFIG = "experiments/imagenet.py"


def build_parser():
  parser = cli.parser("scripts.convert_torchvision", __doc__)
  parser.add_argument("--name", required=True,
                      help="torchvision's model name, e.g. resnet18, vgg16_bn, alexnet")
  parser.add_argument("--weights", required=True,
                      help="the .pth file holding torchvision's state_dict")
  cli.add_config(parser, workdir="the run directory to write", config_required=False)
  parser.set_defaults(config=DEFAULT_CONFIG)
  parser.add_argument("--num_classes", type=int, default=None,
                      help="outputs of the head (default: the weights' 1000); another "
                           "count gets a fresh head")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace what the workdir holds")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, overrides = cli.parse(build_parser(), argv)
  with exit_on_user_error():
    from cnn import config as config_lib
    from cnn import pretrained
    config = config_lib.load(args.config, overrides)
    converted = pretrained.convert(args.name, args.weights, args.num_classes,
                                   seed=int(config.get("seed", 0)))
    workdir = pretrained.write_workdir(args.workdir, converted, config,
                                       overwrite=args.overwrite)
  fresh = ", ".join(converted.fresh) or "none"
  print(f"{workdir}: torchvision's {args.name} as {converted.model_config['name']} "
        f"({converted.num_classes} classes) at step 0; initialised afresh: {fresh}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
