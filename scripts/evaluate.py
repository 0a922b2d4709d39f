"""Evaluate a run's checkpoint on its evaluation split with its task's scores
(classification: loss, top-1/top-5 error; segmentation: mean IoU, pixel accuracy, ...).

    python -m scripts.evaluate --workdir runs/lenet [--best]
"""
from __future__ import annotations

import json
import pathlib
import sys

from cnn import cli
from cnn.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> int:
  parser = cli.parser("scripts.evaluate", __doc__)
  parser.add_argument("--workdir", required=True, help="a trained run's workdir")
  parser.add_argument("--best", action="store_true",
                      help="use the best checkpoint instead of the latest")
  args, _ = cli.parse(parser, argv, overrides=False)
  with exit_on_user_error():
    cli.prepare_process()   # compilation cache, host memory
    from cnn import evaluation
    result = evaluation.evaluate_workdir(pathlib.Path(args.workdir), best=args.best)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
