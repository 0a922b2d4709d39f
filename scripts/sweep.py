"""Run every run of an experiment's sweep, each in its own workdir under --root.

    python -m scripts.sweep --config experiments/degradation/config.py:cpu \
        --root runs/degradation --dry_run
    python -m scripts.sweep --config experiments/degradation/config.py:cpu \
        --root runs/degradation
    python -m scripts.sweep --config experiments/degradation/config.py --root runs/deg \
        --only 'plain*' --executor slurm --slurm_partition gpu --gpus_per_node 1

The experiment file's ``get_sweep`` declares the grid (see cnn/sweep.py); each run
trains in ``<root>/<run name>`` with the overrides written to its overrides.json (and
all of them to <root>/sweep.json). Finished runs (final.json present) are skipped and
interrupted ones resume from their latest checkpoint, so the same command continues
a sweep after any interruption. Runs that evaluate on a held-out part of train
(data.validation_size > 0) are also evaluated once on the test split (test.json).

Executors:
  local           one after another in this process (default)
  subprocess      one after another, each in a fresh `python` process
  submitit_local  submitit's LocalExecutor: subprocesses managed by submitit (waits)
  slurm           one SLURM job per run (or per seed group with --vmap_seeds) via
                  submitit; jobs are requeued on timeout/pre-emption and resume
--vmap_seeds trains the seeds of each setting together in one program (cnn/multi.py):
vmapped on a GPU, which a CIFAR-size model leaves mostly idle; written out per model
on a CPU, where vmap's grouped convolutions are slow (--multi_impl overrides).
Config overrides apply to every run (before the sweep's own values).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cnn import cli
from cnn.errors import exit_on_user_error

EXECUTORS = ("local", "subprocess", "submitit_local", "slurm")   # cnn.sweep.EXECUTORS


def build_parser():
  parser = cli.parser("scripts.sweep", __doc__)
  cli.add_config(parser, workdir=None)
  parser.add_argument("--root", required=True, help="folder of the runs' workdirs")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the runs, their overrides and state; train nothing")
  parser.add_argument("--executor", default="local", choices=EXECUTORS)
  parser.add_argument("--only", default=None,
                      help="comma-separated shell patterns of run names, e.g. 'plain*'")
  parser.add_argument("--vmap_seeds", action="store_true",
                      help="train runs that differ only in seed together (cnn/multi.py)")
  parser.add_argument("--multi_impl", default="auto", choices=("auto", "vmap", "unroll"),
                      help="how --vmap_seeds shares the program: vmap (GPU), unroll "
                           "(CPU), auto")
  slurm = parser.add_argument_group("slurm / submitit")
  slurm.add_argument("--timeout_min", type=int, default=24 * 60)
  slurm.add_argument("--slurm_partition", default=None)
  slurm.add_argument("--gpus_per_node", type=int, default=1)
  slurm.add_argument("--cpus_per_task", type=int, default=8)
  slurm.add_argument("--mem_gb", type=int, default=32)
  slurm.add_argument("--slurm_array_parallelism", type=int, default=64)
  slurm.add_argument("--no_wait", action="store_true",
                     help="submit and return (slurm default); else wait for the jobs")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args, overrides = cli.parse(build_parser(), argv)
  with exit_on_user_error():
    cli.prepare_process()   # compilation cache, host memory
    from cnn import sweep  # pylint: disable=import-outside-toplevel
    options = sweep.SlurmOptions(
        timeout_min=args.timeout_min, partition=args.slurm_partition,
        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb, array_parallelism=args.slurm_array_parallelism,
        wait=not args.no_wait)
    results = sweep.run(args.config, args.root, overrides=overrides, only=args.only,
                        executor=args.executor, vmap_seeds=args.vmap_seeds,
                        multi_impl=args.multi_impl, options=options,
                        dry_run=args.dry_run)
  failed = [r for r in results if r.get("status") not in ("done", "skipped (done)")]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
