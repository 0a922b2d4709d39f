"""Kill a training run at random moments and check that it resumes bit for bit.

    python -m benchmarks.resume_harness --config experiments/lenet_digits.py \\
        --workdir /tmp/harness --kills 3 --seed 0 \\
        --config.train.steps=48 --config.train.checkpoint_every=4

Trains the config twice with ``python -m scripts.train``: once uninterrupted
(``<workdir>/reference``) and once under fire (``<workdir>/killed``), where the process
gets SIGKILL (or SIGTERM) at seeded random moments and is started again after each, as
on a pre-emptible machine. The moments are of four kinds:

* ``checkpoint``: the instant a checkpoint write starts (orbax's temporary directory
  appears), i.e. with a half-written checkpoint on disk;
* ``step``: a random delay (up to 0.2 s) after the life's first new checkpoint is
  complete, usually mid-step;
* ``startup``: a random delay after the launch (imports, compilation, restore);
* ``sigterm``: like ``step`` but a SIGTERM (a pre-emption notice): the run must write
  a checkpoint and exit 0 by itself.

Then it compares the final checkpoints (parameters, optimizer state, batch-norm
statistics, rng, counters: every bit), metrics.jsonl and final.json (both without the
``img_per_s`` timing) and exits 0 only if they are identical. Each life's stderr is
kept under ``<workdir>/logs``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from cnn import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
MOMENTS = ("checkpoint", "step", "startup", "sigterm")
TMP_MARK = ".orbax-checkpoint-tmp"   # orbax's name for a step being written
TIMING_KEYS = ("img_per_s",)         # wall-clock fields: never reproducible
POLL_S = 0.002


@dataclasses.dataclass
class Kill:
  """One life of the run under fire and how it ended."""
  moment: str                     # one of MOMENTS
  start_step: int                 # newest complete checkpoint when the life began
  killed: bool = False            # False: the run finished before the moment came
  at_s: float = 0.0               # seconds after the launch
  returncode: Optional[int] = None
  writing: Optional[int] = None   # the step being written at a checkpoint kill
  steps_after: list[int] = dataclasses.field(default_factory=list)  # complete steps
  log: Optional[pathlib.Path] = None


# ----------------------------------------------------------------------------------
# Looking at a workdir from outside
# ----------------------------------------------------------------------------------

def complete_steps(workdir: pathlib.Path) -> list[int]:
  """Checkpoint steps orbax has finalised (renamed into place)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def temporary_dirs(workdir: pathlib.Path) -> dict[str, int]:
  """Orbax's temporary directories (checkpoints being written, or left half-written
  by a kill until the next run cleans them up) and their steps."""
  directory = workdir / "checkpoints"
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return {}
  return {n: int(n.split(".")[0]) for n in names
          if TMP_MARK in n and n.split(".")[0].isdigit()}


# ----------------------------------------------------------------------------------
# Running and killing
# ----------------------------------------------------------------------------------

def train_command(config: str, workdir: pathlib.Path, overrides: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "scripts.train", "--config", config, "--workdir",
          str(workdir), *overrides]


def plan(kills: int, seed: int,
         moments: Sequence[str] = ("checkpoint", "step", "sigterm")) -> list[str]:
  """A seeded sequence of kill moments that uses every kind in `moments` if it can."""
  rng = random.Random(seed)
  chosen = list(moments)[:kills]
  chosen += [rng.choice(list(moments)) for _ in range(kills - len(chosen))]
  rng.shuffle(chosen)
  return chosen


def _launch(cmd: Sequence[str], log: pathlib.Path, env) -> subprocess.Popen:
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "wb") as err:
    return subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=err)


def _watch_and_kill(proc: subprocess.Popen, workdir: pathlib.Path, kill: Kill,
                    rng: random.Random, timeout: float) -> None:
  """Waits for the moment `kill.moment` and sends SIGKILL, or SIGTERM for "sigterm"
  (unless the run ends first)."""
  launched = time.monotonic()
  nth_write = rng.choice((1, 2))   # kill during this life's first or second new write
  delay = {"step": rng.uniform(0.0, 0.2), "sigterm": rng.uniform(0.0, 0.2),
           "startup": rng.uniform(0.5, 4.0)}.get(kill.moment, 0.0)
  progressed_at = None
  stale = set(temporary_dirs(workdir))   # left by the previous life's kill
  while proc.poll() is None:
    now = time.monotonic()
    if now - launched > timeout:
      proc.kill()
      raise TimeoutError(f"{' '.join(proc.args)} ran past {timeout} s")
    fire = False
    if kill.moment == "checkpoint":
      writing = sorted(s for n, s in temporary_dirs(workdir).items()
                       if n not in stale and s > kill.start_step)
      if writing:
        new = {s for s in complete_steps(workdir) + writing if s > kill.start_step}
        if len(new) >= nth_write:
          fire, kill.writing = True, writing[-1]
    elif kill.moment in ("step", "sigterm"):
      # After this life's first complete checkpoint: metrics.jsonl may still hold
      # the previous life's records until the run has restored and truncated it.
      if progressed_at is None and max(complete_steps(workdir), default=0) > kill.start_step:
        progressed_at = now
      fire = progressed_at is not None and now - progressed_at >= delay
    else:
      fire = now - launched >= delay
    if fire:
      proc.send_signal(signal.SIGTERM if kill.moment == "sigterm" else signal.SIGKILL)
      kill.returncode = proc.wait(timeout)
      kill.killed, kill.at_s = True, now - launched
      return
    time.sleep(POLL_S)
  kill.returncode = proc.returncode


def run_with_kills(cmd: Sequence[str], workdir: pathlib.Path, moments: Sequence[str], *,
                   seed: int = 0, env=None, logs: Optional[pathlib.Path] = None,
                   timeout: float = 600.0) -> tuple[list[Kill], subprocess.CompletedProcess]:
  """Runs `cmd` (which trains into `workdir`) once per moment, signalling it then, and
  a last time to the end. Returns the lives and the final process."""
  rng = random.Random(seed)
  logs = logs or workdir.parent / "logs"
  lives = []
  for i, moment in enumerate(moments):
    kill = Kill(moment, start_step=max(complete_steps(workdir), default=0),
                log=logs / f"life{i}.stderr")
    proc = _launch(cmd, kill.log, env)
    _watch_and_kill(proc, workdir, kill, rng, timeout)
    kill.steps_after = complete_steps(workdir)
    lives.append(kill)
    if not kill.killed:
      break
  log = logs / "final.stderr"
  proc = _launch(cmd, log, env)
  try:
    proc.wait(timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  final = subprocess.CompletedProcess(proc.args, proc.returncode, None, log.read_text())
  return lives, final


# ----------------------------------------------------------------------------------
# Comparing two finished runs
# ----------------------------------------------------------------------------------

def _without_timing(record: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def metric_records(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """metrics.jsonl without timings; every line must parse."""
  text = (workdir / "metrics.jsonl").read_text()
  return [_without_timing(json.loads(line)) for line in text.splitlines()]


def _bits(x) -> tuple[str, tuple, bytes]:
  import jax
  import numpy as np
  if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  a = np.asarray(jax.device_get(x))
  return str(a.dtype), a.shape, a.tobytes()


def state_differences(a: Any, b: Any) -> list[str]:
  """Names of the arrays of two train states that differ in any bit."""
  import jax
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  if tree_a != tree_b:
    return [f"tree structure: {tree_a} vs {tree_b}"]
  return [jax.tree_util.keystr(path) for (path, x), (_, y) in zip(flat_a, flat_b)
          if _bits(x) != _bits(y)]


def final_state(workdir: pathlib.Path):
  """(step, train state) of a workdir's latest checkpoint."""
  from cnn import evaluation
  _, state, step = evaluation.restore_state(workdir)
  return step, state


def compare_runs(reference: pathlib.Path, other: pathlib.Path) -> list[str]:
  """What differs between two finished runs; empty if they are identical."""
  problems = []
  step_a, state_a = final_state(reference)
  step_b, state_b = final_state(other)
  if step_a != step_b:
    problems.append(f"final checkpoint steps differ: {step_a} vs {step_b}")
  problems += [f"state {name} differs" for name in state_differences(state_a, state_b)]
  rows_a, rows_b = metric_records(reference), metric_records(other)
  if rows_a != rows_b:
    steps_a, steps_b = [r["step"] for r in rows_a], [r["step"] for r in rows_b]
    if steps_a != steps_b:
      problems.append(f"metrics.jsonl logs steps {steps_a} vs {steps_b}")
    else:
      bad = [ra["step"] for ra, rb in zip(rows_a, rows_b) if ra != rb]
      problems.append(f"metrics.jsonl records differ at steps {bad}")
  final_a = _without_timing(json.loads((reference / "final.json").read_text()))
  final_b = _without_timing(json.loads((other / "final.json").read_text()))
  if final_a != final_b:
    problems.append(f"final.json differs: {final_a} vs {final_b}")
  return problems


# ----------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
  parser = cli.parser("benchmarks.resume_harness", __doc__)
  cli.add_config(parser, workdir="folder for the reference run, the killed run and the "
                 "logs")
  parser.add_argument("--kills", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
  parser.add_argument("--moments", default="checkpoint,step,sigterm",
                      help=f"comma-separated kinds of kill moment among {MOMENTS}")
  parser.add_argument("--timeout", type=float, default=1800.0,
                      help="seconds one life may run")
  args, overrides = cli.parse(parser, argv)
  overrides = [f"--config.{o}" for o in overrides]     # as scripts.train takes them
  moments = args.moments.split(",")
  if any(m not in MOMENTS for m in moments) or args.kills < 0:
    parser.error(f"unknown moments {args.moments!r} (choose among {MOMENTS}) or "
                 "negative --kills")
  root = pathlib.Path(args.workdir)
  if root.exists() and any(root.iterdir()):
    parser.error(f"{root} is not empty; the harness needs a fresh --workdir")
  reference, killed = root / "reference", root / "killed"
  env = dict(os.environ)

  done = subprocess.run(train_command(args.config, reference, overrides), cwd=REPO,
                        env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    print(f"the reference run failed:\n{done.stderr}", file=sys.stderr)
    return 2
  lives, final = run_with_kills(train_command(args.config, killed, overrides), killed,
                                plan(args.kills, args.seed, moments), seed=args.seed,
                                env=env, logs=root / "logs", timeout=args.timeout)
  for i, life in enumerate(lives):
    what = (f"signalled {life.at_s:.2f} s after launch, exit {life.returncode}"
            if life.killed else "finished before the signal")
    writing = f" while writing step {life.writing}" if life.writing is not None else ""
    print(f"life {i}: from step {life.start_step}, {life.moment} moment, {what}"
          f"{writing}; complete checkpoints after: {life.steps_after}")
  if final.returncode:
    print(f"the last life failed:\n{final.stderr}", file=sys.stderr)
    return 1
  problems = [f"life {i} exited {life.returncode} after SIGTERM, not 0"
              for i, life in enumerate(lives)
              if life.moment == "sigterm" and life.killed and life.returncode != 0]
  problems += compare_runs(reference, killed)
  for problem in problems:
    print(f"DIFFERENT: {problem}")
  print("identical to the uninterrupted run" if not problems else
        f"{len(problems)} differences")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
