"""Sweeps: one experiment file, a grid of runs, each in a workdir named after its settings.

How an experiment file declares a sweep (the convention every experiments/*.py follows):

    from cnn import sweep

    def get_config(preset=""):            # the base config of every run
      ...

    def get_sweep(config, preset=""):     # `config` is get_config(preset)
      return sweep.product({"model.name": ["plain20", "resnet20"], "seed": [0, 1]})

`get_sweep` receives the preset's base config and, if it takes a second argument, the
preset's name (so a preset can change the grid, e.g. fewer seeds or depths), and
returns a list whose entries are either a dict of
overrides, ``{"dotted.config.key": value, ...}``, or a ``(name, dict)`` pair when the
file wants to name the run itself. Unnamed runs are named from their values by
`run_name` (``{"model.name": "plain56", "seed": 0}`` -> ``plain56_s0``). `product`
builds the Cartesian grid of some axes, `zip_axes` pairs axes element by element.

A run's config is ``config.load(spec, ["key=value", ...])``, i.e. exactly what
``python -m scripts.train --config spec --config.key=value ...`` trains, so any run of
a sweep can be reproduced or continued by hand. `plan` expands a sweep into `SweepRun`s
with their workdirs under a root and their state there (see `run_status`), and `run`
trains the ones not done with an executor (`EXECUTORS`); scripts/sweep.py is its CLI.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import itertools
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

import ml_collections

from cnn import config as config_lib
from cnn.errors import ConfigError, unknown_choice

# Where the runs train: this process, a fresh process each, or submitit.
EXECUTORS = ("local", "subprocess", "submitit_local", "slurm")
# What `run_status` reports for a workdir.
DONE, PARTIAL, NEW = "done", "partial", "new"
# Run names become directory names: keep them portable.
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
# Short prefixes for keys whose bare values would be ambiguous in a run name.
_PREFIXES = {"seed": "s"}


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The Cartesian grid of `axes` ({key: values}); the first key varies slowest."""
  keys = list(axes)
  for key in keys:
    _check_axis(key, axes[key])
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zip_axes(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Runs taking the i-th value of every axis; all axes must have the same length."""
  lengths = {len(_check_axis(k, v)) for k, v in axes.items()}
  if len(lengths) > 1:
    raise ConfigError(f"zip_axes needs axes of one length, got lengths {sorted(lengths)}; "
                      "use product for a grid.")
  n = lengths.pop() if lengths else 0
  return [{k: v[i] for k, v in axes.items()} for i in range(n)]


def _check_axis(key: str, values: Any) -> Sequence[Any]:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ConfigError(f"Sweep axis {key!r} must be a non-empty list of values, got "
                      f"{values!r}.")
  return values


def format_value(value: Any) -> str:
  """A value as it appears in a run name: 0.1 -> '0.1', True -> 'True', 'A' -> 'A'."""
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return "-".join(format_value(v) for v in value)
  return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
  """The default name of a run: its values joined by '_', in the sweep's key order.

  ``model.name`` contributes its bare value (it already says what the run is), seeds
  are ``s<seed>``, other keys ``<last key part><value>``: ``{"model.name": "plain56",
  "optim.learning_rate": 0.05, "seed": 1}`` -> ``plain56_learning_rate0.05_s1``.
  """
  parts = []
  for key, value in overrides.items():
    leaf = key.rsplit(".", 1)[-1]
    if key == "model.name":
      parts.append(format_value(value))
    else:
      parts.append(f"{_PREFIXES.get(key, leaf)}{format_value(value)}")
  return "_".join(parts) or "base"


def override_args(overrides: Mapping[str, Any]) -> list[str]:
  """``--config.key=value`` arguments that reproduce `overrides` on the command line
  (values written as Python literals, which `config.apply_override` parses back)."""
  return [f"--config.{key}={value!r}" for key, value in overrides.items()]


@dataclasses.dataclass
class SweepRun:
  """One run of a sweep: its name, overrides, workdir and config."""
  name: str
  overrides: dict[str, Any]
  workdir: pathlib.Path
  config: ml_collections.ConfigDict

  @property
  def status(self) -> str:
    return run_status(self.workdir)

  def command(self, spec: str) -> str:
    """The scripts.train command line that trains (or resumes) this run alone."""
    args = " ".join(_shell_quote(a) for a in override_args(self.overrides))
    return (f"python -m scripts.train --config {spec} --workdir {self.workdir}"
            + (f" {args}" if args else ""))


def _shell_quote(arg: str) -> str:
  import shlex
  return shlex.quote(arg)


def run_status(workdir: pathlib.Path) -> str:
  """'done' (final.json written), 'partial' (a config or checkpoint but no final.json:
  an interrupted run that `train.fit` resumes) or 'new'."""
  workdir = pathlib.Path(workdir)
  if (workdir / "final.json").exists():
    return DONE
  if (workdir / "config.json").exists() or (workdir / "checkpoints").is_dir():
    return PARTIAL
  return NEW


def latest_step(workdir: pathlib.Path) -> int:
  """The last step logged in a workdir's metrics.jsonl (0 if none)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return 0
  step = 0
  for line in path.read_text().splitlines():
    try:
      step = max(step, int(json.loads(line).get("step", 0)))
    except (ValueError, AttributeError):
      continue
  return step


def load_sweep(spec: str, overrides: Iterable[str] = ()) -> tuple[
    ml_collections.ConfigDict, list[tuple[str, dict[str, Any]]]]:
  """(base config, [(name, overrides), ...]) of ``experiments/x.py[:preset]``.

  `overrides` (``key=value`` strings) change the base config of every run, after the
  preset and before the sweep's own values.
  """
  overrides = list(overrides)
  base = config_lib.load(spec, overrides)
  module = config_lib.experiment_module(spec)
  path = spec.partition(":")[0]
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} has no get_sweep(config) function; a sweep file must "
                      "define one returning a list of override dicts (see cnn/sweep.py).")
  preset = spec.partition(":")[2]
  get_sweep = module.get_sweep
  fresh = config_lib.load(spec, overrides)    # get_sweep may modify its argument
  try:
    takes_preset = len(inspect.signature(get_sweep).parameters) >= 2
  except (TypeError, ValueError):
    takes_preset = False
  entries = get_sweep(fresh, preset) if takes_preset else get_sweep(fresh)
  return base, _named_entries(path, entries)


def _named_entries(path: str, entries: Any) -> list[tuple[str, dict[str, Any]]]:
  if not isinstance(entries, (list, tuple)) or not entries:
    raise ConfigError(f"get_sweep in {path} must return a non-empty list of override "
                      f"dicts, got {type(entries).__name__}.")
  named, seen = [], {}
  for i, entry in enumerate(entries):
    if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
        and isinstance(entry[1], Mapping)):
      name, values = entry[0], dict(entry[1])
    elif isinstance(entry, Mapping):
      values = dict(entry)
      name = run_name(values)
    else:
      raise ConfigError(f"Entry {i} of get_sweep in {path} is {entry!r}; each entry "
                        "must be a dict of overrides or a (name, dict) pair.")
    for key in values:
      if not isinstance(key, str) or not key:
        raise ConfigError(f"Entry {i} of get_sweep in {path} has the key {key!r}; keys "
                          "are dotted config keys such as 'model.name'.")
    if not _NAME_OK.match(name):
      raise ConfigError(f"Run name {name!r} in {path} is not a portable directory name; "
                        "use letters, digits and . _ + = - only.")
    if name in seen:
      raise ConfigError(f"get_sweep in {path} names two runs {name!r} (entries "
                        f"{seen[name]} and {i}); make their names or values differ.")
    seen[name] = i
    named.append((name, values))
  return named


def plan(spec: str, root: str | pathlib.Path, *, overrides: Iterable[str] = (),
         only: Optional[str] = None) -> list[SweepRun]:
  """The runs of a sweep under `root`, each with its complete, validated config.

  `only` keeps the runs whose name matches one of its comma-separated shell patterns
  (``plain*,resnet56_*``). Every config is built and validated here, so a mistake in
  any run stops the sweep before the first one trains.
  """
  overrides = list(overrides)
  _, entries = load_sweep(spec, overrides)
  if only:
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    entries = [(n, v) for n, v in entries if any(fnmatch.fnmatchcase(n, p)
                                                   for p in patterns)]
    if not entries:
      raise ConfigError(f"--only {only!r} matches no run of {spec}; run with --dry_run "
                        "to list the names.")
  root = pathlib.Path(root)
  runs = []
  for name, values in entries:
    args = overrides + [a.removeprefix("--") for a in override_args(values)]
    try:
      config = config_lib.load(spec, args)
      config_lib.validate(config)
    except ConfigError as e:
      raise ConfigError(f"Run {name} of {spec}: {e}") from None
    runs.append(SweepRun(name, values, root / name, config))
  return runs


def write_plan(root: str | pathlib.Path, spec: str, runs: Sequence[SweepRun],
               overrides: Sequence[str] = ()) -> pathlib.Path:
  """Writes ``<root>/sweep.json`` (the spec, base overrides, every run's overrides and
  command) and each run's ``overrides.json``; returns the sweep.json path."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  for run in runs:
    run.workdir.mkdir(parents=True, exist_ok=True)
    (run.workdir / "overrides.json").write_text(json.dumps(
        {"spec": spec, "base_overrides": list(overrides), "overrides": run.overrides},
        indent=2, sort_keys=True) + "\n")
  index = {"spec": spec, "base_overrides": list(overrides),
           "runs": [{"name": r.name, "overrides": r.overrides,
                     "command": r.command(spec)} for r in runs]}
  path = root / "sweep.json"
  # Several --only invocations share a root: merge with the runs already listed.
  if path.exists():
    try:
      old = json.loads(path.read_text())
      listed = {r["name"] for r in index["runs"]}
      if _resolved(old.get("spec", "")) == _resolved(spec):
        index["runs"] = [r for r in old.get("runs", []) if r["name"] not in listed] + \
            index["runs"]
    except (ValueError, KeyError, TypeError):
      pass
  path.write_text(json.dumps(index, indent=2) + "\n")
  return path


def _resolved(spec: str) -> str:
  """A spec with its file's absolute path: the subprocess executor's child sweeps get
  the absolute spec, and must merge with the parent's sweep.json, not replace it."""
  path, sep, preset = spec.partition(":")
  return str(pathlib.Path(path).resolve()) + sep + preset


def seed_groups(runs: Sequence[SweepRun]) -> list[list[SweepRun]]:
  """Runs grouped by everything but their seed (the units `cnn.multi` trains together),
  in sweep order."""
  groups: dict[str, list[SweepRun]] = {}
  for run in runs:
    rest = run.config.to_dict()
    rest.pop("seed", None)
    groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(run)
  return list(groups.values())


def format_plan(runs: Sequence[SweepRun]) -> str:
  """The dry-run table: name, status (with the last logged step of partial runs),
  steps, and overrides."""
  rows = []
  for run in runs:
    status = run.status
    if status == PARTIAL:
      status = f"partial@{latest_step(run.workdir)}"
    values = " ".join(f"{k}={format_value(v)}" for k, v in run.overrides.items())
    rows.append((run.name, status, str(run.config.train.steps), values))
  header = ("run", "status", "steps", "overrides")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(header[:3], widths)) + "  " + header[3]]
  for row in rows:
    lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
  counts = {s: sum(r.status == s for r in runs) for s in (DONE, PARTIAL, NEW)}
  lines.append(f"{len(runs)} runs: {counts[DONE]} done, {counts[PARTIAL]} partial, "
               f"{counts[NEW]} new")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------
# Running: the unit of work is a list of runs (one run, or a seed group to vmap)
# ----------------------------------------------------------------------------------

def units(runs: Sequence[SweepRun], *, vmap_seeds: bool = False) -> list[list[SweepRun]]:
  """The runs still to train (not done), one per unit, or grouped by everything but
  the seed with `vmap_seeds` (see `cnn.multi`)."""
  todo = [r for r in runs if r.status != DONE]
  if not vmap_seeds:
    return [[r] for r in todo]
  return seed_groups(todo)


def write_test_eval(workdir: str | pathlib.Path) -> Optional[dict[str, Any]]:
  """For a finished run that evaluated on a held-out part of train
  (``data.validation_size`` > 0): its final checkpoint's error on the test split,
  written to ``test.json`` once. Returns it (None for runs that evaluated on test)."""
  workdir = pathlib.Path(workdir)
  path = workdir / "test.json"
  if path.exists():
    return json.loads(path.read_text())
  saved = json.loads((workdir / "config.json").read_text())
  if not saved.get("data", {}).get("validation_size"):
    return None
  from cnn import evaluation, train
  run, state, step = evaluation.restore_state(workdir)
  result = {"step": int(step), "split": "test",
            **train.evaluate_run(run, state, run.dataset.test)}
  train.write_atomic(path, json.dumps(result, indent=2) + "\n")
  return result


def train_unit(spec: str, base_overrides: Sequence[str],
               items: Sequence[tuple[str, Mapping[str, Any], str]], *,
               vmap_seeds: bool = False, multi_impl: str = "auto") -> list[dict[str, Any]]:
  """Trains (or resumes) the runs `items` = [(name, overrides, workdir), ...] of
  `spec`, together with `cnn.multi` when `vmap_seeds` and there are several, else one
  after another with `cnn.train.fit` (`multi_impl`: see `cnn.multi.make_multi_step`);
  finished runs are skipped. Returns one result
  per run: ``{"name", "status", ...last metrics}``. A run whose loss goes non-finite
  is reported (status "halted") and the others go on; a pre-emption stops the unit.
  """
  from cnn import multi, train
  configs, workdirs, names, results = [], [], [], {}
  for name, overrides, workdir in items:
    if run_status(workdir) == DONE:
      results[name] = {"name": name, "status": "skipped (done)"}
      continue
    args = list(base_overrides) + [a.removeprefix("--") for a in override_args(overrides)]
    configs.append(config_lib.load(spec, args))
    workdirs.append(pathlib.Path(workdir))
    names.append(name)
  together = vmap_seeds and len(configs) > 1
  if together:
    try:
      for name, out in zip(names, train.fit_group(configs, workdirs,
                                                        multi_impl=multi_impl)):
        results[name] = {"name": name, **out}
    except multi.UnalignedResume as e:
      print(f"warning: {e}", flush=True)
      together = False
  if not together:
    for name, config, workdir in zip(names, configs, workdirs):
      print(f"=== {name}: training in {workdir}", flush=True)
      start = time.time()
      try:
        out = train.fit(config, workdir)
      except train.NonFiniteError as e:
        out = {"status": "halted", "error": str(e)}
        print(f"error: {name}: {e}", flush=True)
      out["wall_s"] = time.time() - start
      results[name] = {"name": name, **out}
      if out.get("status") == "preempted":
        break
  for name, workdir in zip(names, workdirs):
    if results.get(name, {}).get("status") == "done":
      test = write_test_eval(workdir)
      if test is not None:   # the task's scalar scores, as test_<name>
        results[name].update({f"test_{k}": v for k, v in test.items()
                              if isinstance(v, float)})
  return [results[name] for name, _, _ in items if name in results]


class SweepJob:
  """A submitit job: `train_unit` on a cluster node. Requeued on timeout or
  pre-emption with the same arguments (submitit calls `checkpoint`); the runs then
  resume from their latest checkpoints (``train.checkpoint_every``)."""

  def __call__(self, spec, base_overrides, items, vmap_seeds=False, multi_impl="auto"):
    return train_unit(spec, base_overrides, items, vmap_seeds=vmap_seeds,
                      multi_impl=multi_impl)

  def checkpoint(self, *args, **kwargs):
    import submitit
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ----------------------------------------------------------------------------------
# Executors: where the units train
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class SlurmOptions:
  """The submitit executors' resources (``slurm`` and ``submitit_local``)."""
  timeout_min: int = 24 * 60
  partition: Optional[str] = None
  gpus_per_node: int = 1
  cpus_per_task: int = 8
  mem_gb: int = 32
  array_parallelism: int = 64
  wait: bool = False          # wait for submitit_local's jobs (slurm never waits)


def _items(unit: Sequence[SweepRun]) -> list[tuple[str, dict[str, Any], str]]:
  return [(r.name, r.overrides, str(r.workdir.resolve())) for r in unit]


def run_local(spec: str, overrides: Sequence[str], unit_list: Sequence[Sequence[SweepRun]],
              *, vmap_seeds: bool = False, multi_impl: str = "auto") -> list[dict]:
  """Every unit in this process, one after another; a pre-emption stops the sweep."""
  results = []
  for unit in unit_list:
    out = train_unit(spec, overrides, _items(unit), vmap_seeds=vmap_seeds,
                     multi_impl=multi_impl)
    results.extend(out)
    if any(r.get("status") == "preempted" for r in out):
      print("pre-empted: stopping the sweep; run the same command to continue.",
            flush=True)
      break
  return results


def run_subprocesses(spec: str, root: pathlib.Path, overrides: Sequence[str],
                     unit_list: Sequence[Sequence[SweepRun]], *, vmap_seeds: bool = False,
                     multi_impl: str = "auto") -> list[dict]:
  """Each unit as ``python -m scripts.sweep ... --only <its runs> --executor local``
  (from the repository root, where scripts/ lives): a fresh process per run or seed
  group, so one run's memory or crash cannot touch the next; SIGTERM is passed on."""
  results, current = [], {}

  def forward(signum, frame):
    del frame
    if current.get("proc") is not None:
      current["proc"].send_signal(signum)
    current["stop"] = True

  repo = pathlib.Path(__file__).resolve().parents[1]
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    for unit in unit_list:
      names = ",".join(r.name for r in unit)
      cmd = [sys.executable, "-m", "scripts.sweep", "--config", spec, "--root",
             str(pathlib.Path(root).resolve()), "--executor", "local", "--only", names,
             *[f"--config.{o}" for o in overrides]]
      if vmap_seeds:
        cmd += ["--vmap_seeds", "--multi_impl", multi_impl]
      print(f"=== {names}: {' '.join(cmd[1:])}", flush=True)
      start = time.time()
      current["proc"] = subprocess.Popen(cmd, cwd=repo)
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


def run_submitit(spec: str, root: pathlib.Path, overrides: Sequence[str],
                 unit_list: Sequence[Sequence[SweepRun]], *, executor: str,
                 options: SlurmOptions, vmap_seeds: bool = False,
                 multi_impl: str = "auto") -> list[dict]:
  """One submitit job per unit (`SweepJob`, requeued on timeout or pre-emption).
  Returns the results when it waits (submitit_local with `options.wait`), else []."""
  import submitit  # pylint: disable=import-outside-toplevel
  folder = pathlib.Path(root) / "submitit"
  if executor == "submitit_local":
    ex = submitit.LocalExecutor(folder=str(folder))
    ex.update_parameters(timeout_min=options.timeout_min)
  else:
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = dict(timeout_min=options.timeout_min, gpus_per_node=options.gpus_per_node,
                  cpus_per_task=options.cpus_per_task, mem_gb=options.mem_gb,
                  slurm_array_parallelism=options.array_parallelism,
                  name=pathlib.Path(spec.partition(":")[0]).stem)
    if options.partition:
      params["slurm_partition"] = options.partition
    ex.update_parameters(**params)
  job = SweepJob()
  with ex.batch():
    jobs = [ex.submit(job, spec, list(overrides), _items(unit), vmap_seeds, multi_impl)
            for unit in unit_list]
  for unit, j in zip(unit_list, jobs):
    print(f"submitted {','.join(r.name for r in unit)}: job {j.job_id}", flush=True)
  if not (executor == "submitit_local" and options.wait):
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


def summarize(results: Sequence[dict], wall: float) -> str:
  """One line per run (status, eval and test top-1 error), then the wall time."""
  lines = []
  for r in results:
    err = r.get("eval_top1_error")
    extra = f"  eval top-1 error {100 * err:.2f}%" if isinstance(err, float) else ""
    if isinstance(r.get("test_top1_error"), float):
      extra += f"  test top-1 error {100 * r['test_top1_error']:.2f}%"
    lines.append(f"{r['name']}: {r.get('status')}{extra}")
  lines.append(f"sweep wall time {wall / 60:.1f} min")
  return "\n".join(lines)


def run(spec: str, root: str | pathlib.Path, *, overrides: Sequence[str] = (),
        only: Optional[str] = None, executor: str = "local", vmap_seeds: bool = False,
        multi_impl: str = "auto", options: Optional[SlurmOptions] = None,
        dry_run: bool = False) -> list[dict]:
  """Plans the sweep `spec` under `root` and trains what is not done with `executor`.

  `dry_run` prints the plan and trains nothing. Otherwise writes sweep.json, prints
  progress and the summary, and (when there are results) ``<root>/last_sweep.json``.
  Returns one result per run trained or skipped.
  """
  if executor not in EXECUTORS:
    raise unknown_choice("executor", executor, EXECUTORS)
  typed = spec                    # as the user wrote it, for sweep.json's commands
  spec = _resolved(spec)          # for subprocesses and jobs, which run elsewhere
  root = pathlib.Path(root)
  overrides = list(overrides)
  runs = plan(spec, root, overrides=overrides, only=only)
  if dry_run:
    print(f"sweep {typed} under {root}:")
    print(format_plan(runs))
    return []
  if executor == "slurm" and shutil.which("srun") is None:   # before writing anything
    raise ConfigError("--executor slurm needs a SLURM cluster (no srun on the PATH); use "
                      "--executor local, subprocess or submitit_local on this machine.")
  write_plan(root, typed, runs, overrides)
  unit_list = units(runs, vmap_seeds=vmap_seeds)
  skipped = len(runs) - sum(len(u) for u in unit_list)
  print(f"{len(runs)} runs, {skipped} already done, {len(unit_list)} to train "
        f"({executor} executor).", flush=True)
  start = time.time()
  kw = dict(vmap_seeds=vmap_seeds, multi_impl=multi_impl)
  if executor == "local":
    results = run_local(spec, overrides, unit_list, **kw)
  elif executor == "subprocess":
    results = run_subprocesses(spec, root, overrides, unit_list, **kw)
  else:
    results = run_submitit(spec, root, overrides, unit_list, executor=executor,
                           options=options or SlurmOptions(), **kw)
  wall = time.time() - start
  if results:
    print(summarize(results, wall))
    (root / "last_sweep.json").write_text(json.dumps(
        {"wall_s": wall, "executor": executor, "results": results}, indent=2,
        default=str) + "\n")
  return results
