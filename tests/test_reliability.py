"""Reliability: nothing a crash can do costs more than the steps since the last
checkpoint, and nothing a typo can do costs a run.

* SIGKILL at random moments (mid-step, mid-checkpoint-write) and SIGTERM, each followed
  by a restart, give a run that is bit for bit the uninterrupted one
  (benchmarks/resume_harness.py does the killing); SIGTERM checkpoints and exits 0; with
  keep_checkpoints=1 the older checkpoint survives a killed write.
* A checkpoint written on 8 devices continues on 1 and the other way round.
* A corrupt or half-written latest checkpoint is reported in one line and the previous
  one is used; a flipped bit in the array data is caught too (orbax alone reads it
  back silently).
* A workdir with another config is refused unless --overwrite or --fork.
* A non-finite loss or update stops the run at the first bad step with its last good
  checkpoint intact, or is skipped and counted.

Everything runs LeNet-5 on scikit-learn's digits at batch 32 for a few dozen steps.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnn import checkpoint as ckpt_lib
from cnn import config as config_lib
from cnn import evaluation
from cnn import train
from benchmarks import resume_harness as harness
from scripts import train as train_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/lenet_digits.py"
QUIET = ["--config.train.quiet=True", "--config.train.tensorboard=False"]


def _overrides(**values) -> list[str]:
  """``--config.train.<key>=<value>`` for train keys, ``a.b`` keys spelled a__b."""
  out = []
  for key, value in values.items():
    key = key.replace("__", ".") if "__" in key else f"train.{key}"
    out.append(f"--config.{key}={value!r}")
  return out + QUIET


def _config(overrides: list[str]):
  return config_lib.load(CONFIG, overrides)


def _env(devices: int) -> dict[str, str]:
  """This process's environment (compilation cache included) with `devices`
  simulated CPU devices."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> list[str]:
  """The digits, written as npz shards: a process that reads them skips importing
  scikit-learn (about 1 s of CPU), which adds up over the restarted processes."""
  from cnn import data
  folder = tmp_path_factory.mktemp("digits")
  ds = data.load("digits")
  for name, split in (("train", ds.train), ("test", ds.test)):
    np.savez(folder / f"{name}-0.npz", x=split.x, y=split.y)
  return [f"--config.data.source='npz:{folder}/train-*.npz|{folder}/test-*.npz'"]


def _records(workdir: pathlib.Path) -> list[dict]:
  return harness.metric_records(workdir)


def _state(workdir: pathlib.Path):
  return harness.final_state(workdir)


def _leaves(state) -> dict[str, np.ndarray]:
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(
      (state.params, state.opt_state, state.batch_stats)))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


# ----------------------------------------------------------------------------------
# 1-2. SIGKILL and SIGTERM at random moments, restarts, bit-identical result
# ----------------------------------------------------------------------------------

# 48 steps with a checkpoint every 4 and only one kept: every kill during a write
# puts the one older checkpoint at stake. Dropout makes the rng stream matter too. A
# life runs at most ~12 steps before its signal, so four lives leave steps to spare.
KILL_RUN = _overrides(steps=48, batch_size=32, checkpoint_every=4, log_every=4,
                      eval_every=24, keep_checkpoints=1, model__dropout=0.1)
PREEMPTED = re.compile(r"stopped at step (\d+) with a checkpoint; run the same command "
                       r"again to resume\.")


def test_kills_and_preemption_at_random_moments_then_resume_bit_identically(
    tmp_path, digits_npz):
  """Three SIGKILLs (two while a checkpoint is being written, one mid-training) and a
  SIGTERM, each followed by a restart: the final state, metrics.jsonl and final.json
  are those of the uninterrupted run, bit for bit."""
  overrides = KILL_RUN + digits_npz
  train.fit(_config(overrides), tmp_path / "reference")
  killed = tmp_path / "killed"
  moments = ["checkpoint", "sigterm", "step", "checkpoint"]
  lives, final = harness.run_with_kills(
      harness.train_command(CONFIG, killed, overrides), killed, moments, seed=0,
      env=_env(8), logs=tmp_path / "logs", timeout=300)

  assert [life.killed for life in lives] == [True] * 4, [vars(l) for l in lives]
  assert final.returncode == 0, final.stderr
  stderrs = [life.log.read_text() for life in lives]
  next_stderrs = stderrs[1:] + [final.stderr]
  for life, own, following in zip(lives, stderrs, next_stderrs):
    if life.moment == "checkpoint":      # a half-written checkpoint was on disk
      assert life.writing is not None
    if life.moment == "sigterm":         # the run saved and left by itself
      match = PREEMPTED.search(own)
      assert life.returncode == 0 and match, own
      assert int(match.group(1)) == max(life.steps_after)
    else:
      assert life.returncode == -signal.SIGKILL
    # keep_checkpoints=1: no kill leaves the run without a checkpoint at least as new
    # as the one it started from, and the next life restores the newest complete one
    # without falling back.
    assert life.steps_after and max(life.steps_after) >= life.start_step
    assert f"resumed from step {max(life.steps_after)} " in following, following
    assert "unreadable" not in following and "Traceback" not in following, following

  assert harness.compare_runs(tmp_path / "reference", killed) == []


# ----------------------------------------------------------------------------------
# 3. Restore on another device count
# ----------------------------------------------------------------------------------

# Gradients are means over the 32-image batch: on 8 devices XLA adds 8 partial sums
# of 4 examples, on 1 device one sum of 32, so the same numbers are added in another
# order and agree only to float32 rounding (eps = 1.2e-7 relative per operation),
# carried through the remaining steps. Measured here after 8 steps: parameters differ
# by at most 6e-8 (absolute; weights are ~0.1), losses in the 7th digit. rtol 1e-4 with
# atol 1e-6 leaves a 16x margin and still catches real mistakes: changing only the
# momentum from 0.9 to 0.89 moves parameters by up to 3.7e-3, 3,700 times atol.
DEVICE_RUN = _overrides(steps=8, batch_size=32, log_every=2, eval_every=8,
                        model__dropout=0.1)
RTOL, ATOL = 1e-4, 1e-6

# Runs `fit` in a subprocess for each (workdir, stop_after) pair of argv (0: no stop);
# argv[1] holds the overrides, one per line.
_FIT = ("import sys, jax; from cnn import config, train; "
        "print('devices', jax.device_count()); "
        "c = config.load(%r, sys.argv[1].splitlines()); "
        "[train.fit(c, w, stop_after=int(n) or None) "
        "for w, n in zip(sys.argv[2::2], sys.argv[3::2])]" % CONFIG)


def _assert_close_runs(reference, other):
  step_a, a = _state(reference)
  step_b, b = _state(other)
  assert step_a == step_b == 8
  la, lb = _leaves(a), _leaves(b)
  assert la.keys() == lb.keys()
  for name in la:
    np.testing.assert_allclose(lb[name], la[name], rtol=RTOL, atol=ATOL, err_msg=name)
  ra, rb = _records(reference), _records(other)
  assert [r["step"] for r in ra] == [r["step"] for r in rb]
  for x, y in zip(ra, rb):
    assert y == pytest.approx(x, rel=RTOL, abs=ATOL)


def test_checkpoints_move_between_8_devices_and_1(tmp_path, capfd, digits_npz):
  """8 -> 1: four steps here on 8 devices, the rest in a 1-device process; 1 -> 8:
  four steps in that process, the rest here. Both end as the 8-device run does."""
  assert jax.device_count() == 8
  overrides = DEVICE_RUN + digits_npz
  config = _config(overrides)
  reference, eight_to_one, one_to_eight = (tmp_path / n for n in ("ref", "8to1", "1to8"))
  train.fit(config, reference)
  train.fit(config, eight_to_one, stop_after=4)
  done = subprocess.run(
      [sys.executable, "-c", _FIT, "\n".join(overrides), str(eight_to_one), "0",
       str(one_to_eight), "4"], cwd=REPO, env=_env(1), capture_output=True, text=True,
      timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert "devices 1" in done.stdout
  assert f"resumed from step 4 in {eight_to_one}" in done.stderr
  assert harness.complete_steps(one_to_eight) == [4]
  capfd.readouterr()
  train.fit(config, one_to_eight)
  assert f"resumed from step 4 in {one_to_eight}" in capfd.readouterr().err
  _assert_close_runs(reference, eight_to_one)
  _assert_close_runs(reference, one_to_eight)


# ----------------------------------------------------------------------------------
# 4. Corrupt and half-written checkpoints
# ----------------------------------------------------------------------------------

CORRUPT_RUN = _overrides(steps=4, batch_size=32, log_every=2, eval_every=4,
                         checkpoint_every=2)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A finished run with checkpoints 2 and 4, the abstract state to restore into, and
  the states of both steps as read before any damage."""
  workdir = tmp_path_factory.mktemp("two_checkpoints")
  config = _config(CORRUPT_RUN)
  train.fit(config, workdir)
  assert harness.complete_steps(workdir) == [2, 4]
  state, shardings = train.init_state(train.build_run(config))
  abstract = ckpt_lib.abstract_like(state, shardings)
  reader = ckpt_lib.Checkpointer(workdir, read_only=True)
  clean = {s: reader.latest.restore(s, args=ckpt_lib.ocp.args.StandardRestore(abstract))
           for s in (2, 4)}
  reader.close()
  return workdir, abstract, clean


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path, keep: float) -> None:
  path.write_bytes(path.read_bytes()[:int(len(path.read_bytes()) * keep)])


def _flip_bit(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


def _garble(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  for i in range(0, len(data), 7):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def _empty(directory: pathlib.Path) -> None:
  shutil.rmtree(directory)
  directory.mkdir()


# Damage done to checkpoints/4. The largest file is the OCDBT data file that holds
# the array values (LeNet-5's 61,706 parameters and their momentum: ~0.5 MB).
CORRUPTIONS = {
    "array_data_truncated": lambda d: _truncate(_largest_file(d), 0.5),
    "array_data_one_bit_flipped": lambda d: _flip_bit(_largest_file(d)),
    "tree_metadata_garbled": lambda d: _garble(d / "default" / "_METADATA"),
    "tree_metadata_deleted": lambda d: (d / "default" / "_METADATA").unlink(),
    "manifest_truncated": lambda d: _truncate(d / "default" / "manifest.ocdbt", 0.4),
    "manifest_deleted": lambda d: (d / "default" / "manifest.ocdbt").unlink(),
    "step_dir_emptied": _empty,
}


def _same_bits(a, b) -> bool:
  return harness.state_differences(a, b) == []


# When a read fails, orbax closes its event loop while tensorstore reads of other
# arrays are still under way; their callbacks then raise "Event loop is closed" on
# tensorstore's threads. The CLI hides those (cnn.checkpoint mutes stderr around
# reads); pytest collects them through sys.unraisablehook instead.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(
    damage, two_checkpoints, tmp_path, capfd):
  source, abstract, clean = two_checkpoints
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  CORRUPTIONS[damage](workdir / "checkpoints" / "4")
  capfd.readouterr()

  checkpointer = ckpt_lib.Checkpointer(workdir)
  step, state = checkpointer.restore_latest(abstract)
  checkpointer.close()

  err = capfd.readouterr().err.strip()
  assert step == 2 and _same_bits(state, clean[2])
  assert err.count("\n") == 0 and err.startswith("warning: checkpoint 4 in ")
  assert "is unreadable" in err and "trying the previous one" in err
  # Set aside, not deleted, and no longer in orbax's way.
  assert harness.complete_steps(workdir) == [2]
  assert (workdir / ckpt_lib.UNREADABLE / "4").is_dir()


def test_resuming_past_a_corrupt_checkpoint_and_a_torn_log_line_is_identical(
    two_checkpoints, tmp_path):
  """Step 4's checkpoint damaged and a record cut short by a kill (no closing brace,
  no newline) at the end of metrics.jsonl: the run resumes from step 2, drops the torn
  line and rewrites step 4 exactly as before."""
  source, _, clean = two_checkpoints
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  (workdir / "final.json").unlink()
  _flip_bit(_largest_file(workdir / "checkpoints" / "4"))
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"step": 6, "epoch": 0.13, "lr": 0.0')
  result = train.fit(_config(CORRUPT_RUN), workdir)
  assert result["status"] == "done"
  step, state = _state(workdir)
  assert step == 4 and _same_bits(state, clean[4])
  assert _records(workdir) == _records(source)


def test_a_run_killed_after_its_last_checkpoint_still_reports_its_result(two_checkpoints,
                                                                         tmp_path):
  """A restart that finds the final checkpoint trains nothing, yet writes the same
  final.json as the run that got there (it used to write only the status)."""
  source, _, _ = two_checkpoints
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  (workdir / "final.json").unlink()          # as if killed before writing it
  result = train.fit(_config(CORRUPT_RUN), workdir)
  assert result["status"] == "done" and result["step"] == 4
  assert harness.compare_runs(source, workdir) == []


def test_undamaged_data_with_garbled_step_metadata_still_restores(two_checkpoints, tmp_path):
  """_CHECKPOINT_METADATA (timestamps, the fingerprint) is not needed to read the
  arrays; the checkpoint restores unverified rather than being thrown away."""
  source, abstract, clean = two_checkpoints
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  _garble(workdir / "checkpoints" / "4" / "_CHECKPOINT_METADATA")
  checkpointer = ckpt_lib.Checkpointer(workdir)
  step, state = checkpointer.restore_latest(abstract)
  checkpointer.close()
  assert step == 4 and _same_bits(state, clean[4])


def test_unreadable_best_checkpoint_metrics_do_not_block_resuming(two_checkpoints, tmp_path,
                                                                  capfd):
  """Orbax reads every best step's metrics when it opens the folder; a damaged file
  there used to raise before training could resume."""
  source, abstract, _ = two_checkpoints
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  for metrics in (workdir / "best").glob("*/metrics/metrics"):
    metrics.write_text('{"eval_top1_error": ')
  capfd.readouterr()
  checkpointer = ckpt_lib.Checkpointer(workdir, best_metric="eval_top1_error")
  err = capfd.readouterr().err.strip()
  assert err.count("\n") == 0 and "best checkpoints" in err and "unreadable" in err
  assert checkpointer.restore_latest(abstract)[0] == 4
  checkpointer.close()


# ----------------------------------------------------------------------------------
# 5. Another config in the same workdir: refused, --overwrite, --fork
# ----------------------------------------------------------------------------------

def _snapshot(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_other_config_is_refused_unless_overwrite_or_fork(tmp_path, capfd):
  base = ["--config", CONFIG, "--workdir", str(tmp_path),
          *_overrides(steps=4, batch_size=32, log_every=2, eval_every=4)]
  assert train_cli.main(base) == 0
  original = _records(tmp_path)
  before = _snapshot(tmp_path)
  changed = base + ["--config.optim.learning_rate=0.01", "--config.optim.momentum=0.5"]
  capfd.readouterr()

  with pytest.raises(SystemExit) as refused:
    train_cli.main(changed)
  err = capfd.readouterr().err.strip()
  assert refused.value.code == 2 and err.count("\n") == 0
  assert "optim.learning_rate, optim.momentum differ" in err
  assert "--overwrite" in err and "--fork" in err
  assert _snapshot(tmp_path) == before

  # --fork: continue from step 4's checkpoint with the new settings, 2 more steps.
  assert train_cli.main(changed + ["--fork", "--config.train.steps=6"]) == 0
  assert "resumed from step 4" in capfd.readouterr().err
  forked = _records(tmp_path)
  assert forked[:2] == original and [r["step"] for r in forked] == [2, 4, 6]
  assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == 0.01
  assert harness.complete_steps(tmp_path)[-1] == 6

  # --overwrite: start afresh; nothing of the earlier runs is left.
  assert train_cli.main(changed + ["--overwrite"]) == 0
  assert "resumed" not in capfd.readouterr().err
  fresh = _records(tmp_path)
  assert [r["step"] for r in fresh] == [2, 4]
  assert fresh[0]["train_loss"] != original[0]["train_loss"]   # lr 0.01 from step 1
  assert harness.complete_steps(tmp_path) == [4]


# ----------------------------------------------------------------------------------
# 6. Non-finite loss or update
# ----------------------------------------------------------------------------------
# With lr = 1e30 the first update moves every weight by 1e30 times its gradient: huge
# but finite (float32 reaches 3.4e38; LeNet-5's initial gradients are far below 1e8).
# The second forward pass multiplies two layers of such weights (~1e29 each), which
# overflows float32, so step 2 is the first non-finite one.
NAN_RUN = dict(steps=6, batch_size=32, log_every=2, eval_every=0, checkpoint_every=1,
               keep_checkpoints=10, optim__learning_rate=1e30)


def test_nonfinite_stops_at_the_first_bad_step_with_finite_checkpoints(tmp_path, capfd):
  argv = ["--config", CONFIG, "--workdir", str(tmp_path), *_overrides(**NAN_RUN)]
  capfd.readouterr()
  assert train_cli.main(argv) == 1
  err = capfd.readouterr().err.strip()
  assert err.count("\n") == 0, err
  assert "Non-finite loss or gradient at step 2 " in err
  assert "conv1" in err and "fc5" in err          # the groups it names
  assert "the last good checkpoint is step 1" in err
  assert harness.complete_steps(tmp_path) == [1]
  step, state = _state(tmp_path)
  params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
  assert step == 1 and np.all(np.isfinite(params))
  assert np.max(np.abs(params)) > 1e20            # step 1's giant update did happen


def test_nonfinite_skip_mode_counts_skipped_steps(tmp_path):
  config = _config(_overrides(**NAN_RUN, nonfinite="skip"))
  result = train.fit(config, tmp_path)
  assert result["status"] == "done"
  # Step 1 applies; every later step overflows again from the same weights and is
  # skipped: 1 skipped by step 2, 3 by step 4, 5 by step 6.
  assert [(r["step"], r["skipped_steps"]) for r in _records(tmp_path)] == [
      (2, 1), (4, 3), (6, 5)]
  reader = ckpt_lib.Checkpointer(tmp_path, keep=10, read_only=True)
  state, shardings = train.init_state(train.build_run(config))
  abstract = ckpt_lib.abstract_like(state, shardings)
  first, last = (reader.latest.restore(s, args=ckpt_lib.ocp.args.StandardRestore(abstract))
                 for s in (1, 6))
  reader.close()
  assert harness.state_differences(first.params, last.params) == []
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(last.params)))
