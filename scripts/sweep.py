"""Run every run of an experiment's sweep, each in its own workdir under --root.

    python -m scripts.sweep experiments/degradation.py:cpu --root runs/degradation --dry_run
    python -m scripts.sweep experiments/degradation.py:cpu --root runs/degradation
    python -m scripts.sweep experiments/degradation.py --root runs/deg --only 'plain*' \
        --executor slurm --slurm_partition gpu --gpus_per_node 1 --timeout_min 720

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
--config.a.b=v overrides apply to every run (before the sweep's own values).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from cnn.errors import ConfigError, exit_on_user_error

EXECUTORS = ("local", "subprocess", "submitit_local", "slurm")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m scripts.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("spec", help="experiments/<study>.py[:preset] defining get_sweep")
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
  args, rest = parser.parse_known_args(argv)
  overrides = [a.removeprefix("--") for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  return args, overrides


def _items(unit):
  return [(r.name, r.overrides, str(r.workdir.resolve())) for r in unit]


def run_local(spec, overrides, unit_list, vmap_seeds, multi_impl) -> list[dict]:
  from cnn import sweep
  results = []
  for unit in unit_list:
    out = sweep.train_unit(spec, overrides, _items(unit), vmap_seeds=vmap_seeds,
                           multi_impl=multi_impl)
    results.extend(out)
    if any(r.get("status") == "preempted" for r in out):
      print("pre-empted: stopping the sweep; run the same command to continue.",
            flush=True)
      break
  return results


def run_subprocesses(spec, root, overrides, unit_list, vmap_seeds,
                     multi_impl) -> list[dict]:
  """Each unit as ``python -m scripts.sweep ... --only <its runs> --executor local``:
  a fresh process per run (or seed group); SIGTERM is passed on to it."""
  results, current = [], {}

  def forward(signum, frame):
    del frame
    if current.get("proc") is not None:
      current["proc"].send_signal(signum)
    current["stop"] = True

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    for unit in unit_list:
      names = ",".join(r.name for r in unit)
      cmd = [sys.executable, "-m", "scripts.sweep", spec, "--root", str(root),
             "--executor", "local", "--only", names, *[f"--{o}" for o in overrides]]
      if vmap_seeds:
        cmd += ["--vmap_seeds", "--multi_impl", multi_impl]
      print(f"=== {names}: {' '.join(cmd[1:])}", flush=True)
      start = time.time()
      current["proc"] = subprocess.Popen(cmd)
      rc = current["proc"].wait()
      current["proc"] = None
      for r in unit:
        results.append({"name": r.name, "status": r.status if rc == 0 else f"exit {rc}",
                        "wall_s": time.time() - start})
      if current.get("stop"):
        break
  finally:
    signal.signal(signal.SIGTERM, previous)
  return results


def run_submitit(spec, root, overrides, unit_list, vmap_seeds, args) -> list[dict]:
  import submitit
  from cnn import sweep
  folder = pathlib.Path(root) / "submitit"
  if args.executor == "submitit_local":
    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=args.timeout_min)
  else:
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = dict(timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_node,
                  cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                  slurm_array_parallelism=args.slurm_array_parallelism,
                  name=pathlib.Path(spec.partition(":")[0]).stem)
    if args.slurm_partition:
      params["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**params)
  job = sweep.SweepJob()
  with executor.batch():
    jobs = [executor.submit(job, spec, list(overrides), _items(unit), vmap_seeds,
                            args.multi_impl) for unit in unit_list]
  for unit, j in zip(unit_list, jobs):
    print(f"submitted {','.join(r.name for r in unit)}: job {j.job_id}", flush=True)
  wait = args.executor == "submitit_local" and not args.no_wait
  if not wait:
    print(f"{len(jobs)} jobs submitted; logs in {folder}. Run the same command again "
          "to see what is done and resubmit the rest.")
    return []
  results = []
  for unit, j in zip(unit_list, jobs):
    try:
      results.extend(j.result())
    except Exception as e:  # noqa: BLE001 -- one failed job must not hide the others
      first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
      results.extend({"name": r.name, "status": f"failed: {first}"} for r in unit)
  return results


def summarize(results: list[dict], wall: float) -> str:
  lines = []
  for r in results:
    err = r.get("eval_top1_error")
    extra = f"  eval top-1 error {100 * err:.2f}%" if isinstance(err, float) else ""
    if isinstance(r.get("test_top1_error"), float):
      extra += f"  test top-1 error {100 * r['test_top1_error']:.2f}%"
    lines.append(f"{r['name']}: {r.get('status')}{extra}")
  lines.append(f"sweep wall time {wall / 60:.1f} min")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    from cnn import compilation_cache
    compilation_cache.enable()   # a resumed or repeated run skips recompiling
    from cnn import sweep
    spec_path, sep, preset = args.spec.partition(":")
    spec = str(pathlib.Path(spec_path).resolve()) + (sep + preset)
    root = pathlib.Path(args.root)
    runs = sweep.plan(spec, root, overrides=overrides, only=args.only)
    if args.dry_run:
      print(f"sweep {args.spec} under {root}:")
      print(sweep.format_plan(runs))
      return 0
    if args.executor == "slurm" and shutil.which("srun") is None:
      raise ConfigError("--executor slurm needs a SLURM cluster (no srun on the PATH); use "
                        "--executor local, subprocess or submitit_local on this machine.")
    sweep.write_plan(root, args.spec, runs, overrides)
    unit_list = sweep.units(runs, vmap_seeds=args.vmap_seeds)
    skipped = len(runs) - sum(len(u) for u in unit_list)
    print(f"{len(runs)} runs, {skipped} already done, {len(unit_list)} to train "
          f"({args.executor} executor).", flush=True)
    start = time.time()
    if args.executor == "local":
      results = run_local(spec, overrides, unit_list, args.vmap_seeds, args.multi_impl)
    elif args.executor == "subprocess":
      results = run_subprocesses(spec, root, overrides, unit_list, args.vmap_seeds,
                                 args.multi_impl)
    else:
      results = run_submitit(spec, root, overrides, unit_list, args.vmap_seeds, args)
    wall = time.time() - start
  if results:
    print(summarize(results, wall))
    (root / "last_sweep.json").write_text(json.dumps(
        {"wall_s": wall, "executor": args.executor, "results": results}, indent=2,
        default=str) + "\n")
  failed = [r for r in results if r.get("status") not in ("done", "skipped (done)")]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
