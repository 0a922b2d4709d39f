"""Transfer learning, worked example: digits 5-9 from a few examples, with and without
a network trained on digits 0-4.

    python -m experiments.finetune.run                  # MNIST, 10 and 50 per class
    python -m experiments.finetune.run --shots 10 --data digits   # sklearn's digits

Pre-trains LeNet-5 on the digits 0-4, then for each number of images per class and
each draw of them (--seeds) trains from scratch, probes the frozen features with a
logistic regression, trains a new head on the frozen backbone, and fine-tunes every
layer; prints the mean ± std test accuracy of each method (also written to
<root>/results.md and .json). The study is experiments/finetune/study.py, its presets
experiments/finetune/config.py. A few CPU minutes for MNIST.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import exit_on_user_error


def build_parser():
  parser = cli.parser("experiments.finetune.run", __doc__)
  parser.add_argument("--root", default="runs/transfer_mnist",
                      help="folder for the shards and the runs (default %(default)s)")
  parser.add_argument("--data", default="mnist", help="mnist (default) or digits")
  parser.add_argument("--data_dir", default=None, help="where mnist/ lives")
  parser.add_argument("--shots", default="10,50",
                      help="training images per class, comma-separated (default 10,50)")
  parser.add_argument("--seeds", type=int, default=3,
                      help="draws of the few training images (seeds 0..k-1; default 3)")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps of each few-shot run (default: the experiment's)")
  parser.add_argument("--pretrain_steps", type=int, default=None)
  parser.add_argument("--reuse_pretrain", action="store_true",
                      help="keep a finished pretrain run under --root")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, _ = cli.parse(build_parser(), argv, overrides=False)
  with exit_on_user_error():
    from cnn import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.enable()   # the study's runs share compiled steps across calls
    from experiments.finetune import study  # pylint: disable=import-outside-toplevel
    text = study.run(pathlib.Path(args.root), data=args.data, data_dir=args.data_dir,
                     shots=study.parse_shots(args.shots), seeds=args.seeds,
                     steps=args.steps, pretrain_steps=args.pretrain_steps,
                     reuse_pretrain=args.reuse_pretrain)
  sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
