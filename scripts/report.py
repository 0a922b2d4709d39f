"""A Markdown table of any runs' final metrics: workdirs or sweep roots.

    python -m scripts.report runs/a runs/b --metric eval_top1_error,train_loss
    python -m scripts.report runs/degradation --mean_seeds --percent --out table.md

One row per run: whether it finished, its last logged step and the last value of
each --metric (final.json's when the run finished; test.json's scores as test_<name>).
--mean_seeds gives one row per setting, mean ± sample std over the runs whose configs
differ only in the seed. Without --metric, the metrics every run logged. A study's
own report lives with the study (python -m experiments.degradation.report).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import exit_on_user_error


def build_parser():
  parser = cli.parser("scripts.report", __doc__)
  parser.add_argument("paths", nargs="+", help="workdirs or sweep roots")
  parser.add_argument("--metric", default="",
                      help="columns, comma-separated (default: every metric logged)")
  parser.add_argument("--mean_seeds", action="store_true",
                      help="one row per setting: mean ± std over its seeds")
  parser.add_argument("--percent", action="store_true", help="values x 100")
  parser.add_argument("--out", default=None, help="Markdown file (default: print)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, _ = cli.parse(build_parser(), argv, overrides=False)
  with exit_on_user_error():
    from cnn import runs  # pylint: disable=import-outside-toplevel
    found = runs.load(args.paths)
    columns = [m.strip() for m in args.metric.split(",") if m.strip()]
    if not columns:   # what every run has, so the table has no holes
      columns = sorted(set.intersection(*(set(runs.final_metrics(r)) for r in found)))
    text = runs.table(found, columns, mean_seeds=args.mean_seeds, percent=args.percent)
  cli.emit(text, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
