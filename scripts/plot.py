"""Training curves of any runs: workdirs, or sweep roots (folders of workdirs).

    python -m scripts.plot runs/a runs/b --metric train_loss --out fig.png
    python -m scripts.plot runs/degradation --metric train_top1_error,eval_top1_error \
        --mean_seeds --out runs/degradation/errors.pdf

One panel per metric of metrics.jsonl (--metric, comma-separated; an unknown one is
refused with the list of logged ones), one line per run against the step, labelled
with the run's folder (and its parents where two runs share a name). --mean_seeds
draws one line per setting: the mean over the runs whose configs differ only in the
seed. A study's own figures live with the study (e.g. python -m
experiments.degradation.plot for He et al.'s Fig. 6).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import ConfigError, exit_on_user_error


def build_parser():
  parser = cli.parser("scripts.plot", __doc__)
  parser.add_argument("paths", nargs="+", help="workdirs or sweep roots")
  parser.add_argument("--metric", default="train_loss",
                      help="metrics.jsonl keys, comma-separated (default %(default)s)")
  parser.add_argument("--out", default="curves.png", help="a .png, .pdf or .svg file")
  parser.add_argument("--mean_seeds", action="store_true",
                      help="one line per setting: the mean over its seeds")
  parser.add_argument("--log_y", action="store_true", help="logarithmic y axes")
  parser.add_argument("--title", default="")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, _ = cli.parse(build_parser(), argv, overrides=False)
  with exit_on_user_error():
    from cnn import visualize  # pylint: disable=import-outside-toplevel
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    if not metrics:
      raise ConfigError("--metric names no metric; pass e.g. --metric train_loss.")
    curves = visualize.runs_curves(args.paths, metrics, mean_seeds=args.mean_seeds)
    fig = visualize.curves_figure(curves, metrics, log_y=args.log_y, title=args.title)
    print(visualize.save(fig, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
