"""Evaluate a run's checkpoint on its evaluation split: top-1 and top-5 error.

    python -m scripts.evaluate --workdir runs/lenet [--best] [--split test]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from cnn.errors import ConfigError, exit_on_user_error


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scripts.evaluate", description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--best", action="store_true",
                      help="use the best checkpoint instead of the latest")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    from cnn import compilation_cache
    compilation_cache.enable()   # a resumed or repeated run skips recompiling
    from cnn import evaluation
    result = evaluation.evaluate_workdir(pathlib.Path(args.workdir), best=args.best)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
