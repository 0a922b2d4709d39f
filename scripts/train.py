"""Train a model from an experiment config.

    python -m scripts.train --config experiments/lenet_digits.py --workdir runs/lenet
    python -m scripts.train --config experiments/resnet_cifar.py:plain56 \
        --config.train.steps=2000 --config.optim.learning_rate 0.05 --workdir runs/plain56

The workdir receives config.json, metrics.jsonl, TensorBoard events and checkpoints;
running the same command again resumes from the latest checkpoint.

Several processes (one per host) join one job under srun, or with the coordinator
variables on every process (see the README's "Multi-host"):

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        python -m scripts.train --config experiments/lenet_digits.py --workdir runs/w
"""
from __future__ import annotations

import sys

from cnn import cli
from cnn.errors import exit_on_user_error


def build_parser():
  parser = cli.parser("scripts.train", __doc__)
  cli.add_config(parser, workdir="run directory (resumed if it exists)")
  parser.add_argument("--overwrite", action="store_true",
                      help="discard what the workdir holds and start afresh")
  parser.add_argument("--fork", action="store_true",
                      help="continue from the workdir's checkpoint with a changed config")
  parser.add_argument("--stop_after", type=int, default=None,
                      help="stop with a checkpoint after this many steps of this call")
  cluster = parser.add_argument_group(
      "multi-host", "one job of several processes; default: srun's variables, or "
      "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID")
  cluster.add_argument("--coordinator_address", default=None,
                       help="host:port of process 0 (the same on every process)")
  cluster.add_argument("--num_processes", type=int, default=None)
  cluster.add_argument("--process_id", type=int, default=None)
  return parser


def main(argv: list[str] | None = None) -> int:
  args, overrides = cli.parse(build_parser(), argv)
  with exit_on_user_error():
    cli.prepare_process()   # compilation cache, host memory
    from cnn import sharding
    sharding.maybe_initialize_distributed(args.coordinator_address, args.num_processes,
                                          args.process_id)
    from cnn import config as config_lib
    from cnn import tasks
    from cnn import train
    config = config_lib.load(args.config, overrides)
    try:
      result = train.fit(config, args.workdir, overwrite=args.overwrite, fork=args.fork,
                         stop_after=args.stop_after)
    except train.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  skipped = int(result.get("skipped_steps") or 0)
  if skipped:   # train.nonfinite="skip": the means leave those steps out
    print(f"{skipped} of {result.get('step')} steps were skipped for a non-finite loss or "
          "update (train.nonfinite='skip'); a log window of skipped steps only has null "
          "train metrics.")
  if result.get("status") == "preempted":
    print(f"stopped at step {result.get('step')} with a checkpoint; run the same "
          "command again to resume.", file=sys.stderr)
  else:
    print(tasks.get(config.task).summary(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
