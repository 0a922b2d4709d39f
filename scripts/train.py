"""Train a model from an experiment config.

    python -m scripts.train --config experiments/lenet_digits.py --workdir runs/lenet
    python -m scripts.train --config experiments/resnet_cifar.py:plain56 \
        --config.train.steps=2000 --workdir runs/plain56

The workdir receives config.json, metrics.jsonl, TensorBoard events and checkpoints;
running the same command again resumes from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from cnn.errors import exit_on_user_error


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m scripts.train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="experiments/<study>.py[:preset]")
  parser.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard what the workdir holds and start afresh")
  parser.add_argument("--fork", action="store_true",
                      help="continue from the workdir's checkpoint with a changed config")
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  return args, overrides


def main(argv: list[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    from cnn import compilation_cache
    compilation_cache.enable()   # a resumed or repeated run skips recompiling
    from cnn import sharding
    sharding.maybe_initialize_distributed()
    from cnn import config as config_lib
    from cnn import train
    config = config_lib.load(args.config, overrides)
    try:
      result = train.fit(config, args.workdir, overwrite=args.overwrite, fork=args.fork)
    except train.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  summary = {k: result[k] for k in ("step", "eval_loss", "eval_top1_error",
                                    "eval_top5_error", "train_loss") if k in result}
  if result.get("status") == "preempted":
    print(f"stopped at step {result.get('step')} with a checkpoint; run the same "
          "command again to resume.", file=sys.stderr)
  elif "eval_top1_error" in result:
    from cnn import tasks
    print(tasks.get(config.task).summary(result))
  else:
    print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
