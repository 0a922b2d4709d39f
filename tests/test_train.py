"""The training engine end to end on tiny runs of the embedded digits."""
import json

import jax
import numpy as np
import pytest

from cnn import config as config_lib
from cnn import train
from cnn.errors import ConfigError


def tiny_config(**train_overrides):
  """LeNet-5 on digits for a handful of steps: seconds, not minutes."""
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.data.source = "digits"
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.05
  c.train.batch_size = 32
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 6
  c.train.tensorboard = False
  c.train.quiet = True
  for key, value in train_overrides.items():
    c.train[key] = value
  return c


def _records(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in rows:
    r.pop("img_per_s")
  return rows


def _params(workdir):
  from cnn import evaluation
  _, state, _ = evaluation.restore_state(workdir)
  return jax.device_get(state.params)


def test_same_seed_gives_identical_metrics(tmp_path):
  train.fit(tiny_config(), tmp_path / "a")
  train.fit(tiny_config(), tmp_path / "b")
  assert _records(tmp_path / "a") == _records(tmp_path / "b")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
  train.fit(tiny_config(), tmp_path / "whole")
  first = train.fit(tiny_config(), tmp_path / "split", stop_after=3)
  assert first["status"] == "preempted"
  second = train.fit(tiny_config(), tmp_path / "split")
  assert second["status"] == "done"
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "whole"),
               _params(tmp_path / "split"))
  assert _records(tmp_path / "whole") == _records(tmp_path / "split")


def test_eight_devices_match_one_device(tmp_path, monkeypatch):
  """Data parallelism over 8 simulated devices computes the same step as 1 device."""
  from cnn import sharding
  assert len(jax.devices()) == 8
  train.fit(tiny_config(steps=3, eval_every=3, log_every=3), tmp_path / "eight")
  original = sharding.make_mesh
  monkeypatch.setattr(sharding, "make_mesh",
                      lambda mp=1, devices=None: original(mp, jax.devices()[:1]))
  train.fit(tiny_config(steps=3, eval_every=3, log_every=3), tmp_path / "one")
  monkeypatch.undo()
  a, b = _records(tmp_path / "eight"), _records(tmp_path / "one")
  for ra, rb in zip(a, b):
    for key in ra:
      assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key


def _step_outputs(step_impl, model_name, **model_kw):
  c = tiny_config(step_impl=step_impl, batch_size=16)
  c.model.name = model_name
  for k, v in model_kw.items():
    c.model[k] = v
  run = train.build_run(c)
  state, shardings = train.init_state(run)
  step, _, (x, y) = train.compile_steps(run, shardings)
  state, metrics = step(state, x, y)
  return jax.device_get(state.params), jax.device_get(metrics)


def test_shard_map_equals_jit_without_batch_norm():
  p_jit, m_jit = _step_outputs("jit", "lenet5")
  p_sm, m_sm = _step_outputs("shard_map", "lenet5")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               p_jit, p_sm)
  assert m_jit["loss"] == pytest.approx(m_sm["loss"], rel=1e-5)


def test_shard_map_ghost_batch_norm_differs_from_global():
  """Per-device statistics over 2 images differ from those over the 16-image batch."""
  kw = dict(depth=8, width=4)
  p_jit, m_jit = _step_outputs("jit", "cifar_resnet", **kw)
  p_sm, m_sm = _step_outputs("shard_map", "cifar_resnet", **kw)
  assert m_jit["loss"] != pytest.approx(m_sm["loss"], rel=1e-4)
  p_global, m_global = _step_outputs("shard_map", "cifar_resnet", bn_axis_name="data", **kw)
  assert m_jit["loss"] == pytest.approx(m_global["loss"], rel=1e-4)


def test_nonfinite_stop_names_the_step_and_keeps_the_checkpoint(tmp_path):
  c = tiny_config(steps=4, log_every=2, eval_every=0, checkpoint_every=2)
  c.optim.learning_rate = 1e30
  with pytest.raises(train.NonFiniteError, match="Non-finite loss or gradient at step"):
    train.fit(c, tmp_path)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert all(s <= 2 for s in steps)


def test_nonfinite_skip_counts_skipped_steps(tmp_path):
  c = tiny_config(steps=4, log_every=4, eval_every=0, nonfinite="skip")
  c.optim.learning_rate = 1e30
  result = train.fit(c, tmp_path)
  assert result["skipped_steps"] >= 1


def test_different_config_in_the_same_workdir_is_refused(tmp_path):
  train.fit(tiny_config(steps=2, eval_every=2), tmp_path)
  c = tiny_config(steps=2, eval_every=2)
  c.optim.learning_rate = 0.01
  with pytest.raises(ConfigError, match="optim.learning_rate"):
    train.fit(c, tmp_path)


def test_evaluate_restores_and_reports_errors(tmp_path):
  from cnn import evaluation
  train.fit(tiny_config(), tmp_path)
  result = evaluation.evaluate_workdir(tmp_path)
  assert result["step"] == 6 and result["examples"] > 0
  assert 0.0 <= result["top1_error"] <= result["top5_error"] + 1.0
  assert result["top5_error"] <= result["top1_error"]


@pytest.mark.parametrize("override,needle", [
    ("--config.train.batch_sizee=3", "train.batch_size"),
    ("--config.optim.name=sgdd", "sgd"),
    ("--config.train.batch_size=abc", "batch_size must be a positive int"),
    ("--config.train.batch_size=0", "positive"),
    ("--config.model.name=resnet57", "Unknown model"),
])
def test_cli_config_mistakes_are_one_sentence_and_exit_2(tmp_path, capsys, override, needle):
  from scripts import train as train_cli
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main(["--config", "experiments/lenet_digits.py", "--workdir",
                    str(tmp_path / "w"), override])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and needle in err
  assert not (tmp_path / "w").exists()


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
  """Mixed precision: bf16 convolutions/activations, fp32 parameters and BN statistics;
  one step's loss within bf16's ~3 significant digits of the fp32 loss."""
  def one_step(precision):
    c = tiny_config(precision=precision, batch_size=16)
    c.model.name = "cifar_resnet"
    c.model.depth = 8
    c.model.width = 4
    run = train.build_run(c)
    state, shardings = train.init_state(run)
    step, _, (x, y) = train.compile_steps(run, shardings)
    state, metrics = step(state, x, y)
    return jax.device_get(state), jax.device_get(metrics)

  s32, m32 = one_step("float32")
  s16, m16 = one_step("bfloat16")
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(s16.params))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(s16.batch_stats))
  assert m16["loss"] == pytest.approx(m32["loss"], rel=2e-2)


def test_compilation_cache_folder_and_opt_out(monkeypatch, tmp_path):
  from cnn import compilation_cache
  monkeypatch.setenv("CNN_COMPILATION_CACHE", "0")
  assert compilation_cache.enable() is None
  previous = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("CNN_COMPILATION_CACHE", str(tmp_path / "cache"))
    assert compilation_cache.enable() == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    monkeypatch.delenv("CNN_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_dir() == tmp_path / "xdg" / "cnn" / "jax"
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)


def test_nonfinite_groups_names_the_groups_whose_values_are_bad():
  """Groups of 2, 3 and 1 values, flattened in order (last indices 1, 4, 5): a NaN
  gradient at index 3 lies in group 1, an infinite new parameter at index 5 in group
  2, and group 0 is clean."""
  grads = np.array([0.5, -1.0, 2.0, np.nan, 0.0, 1.0], np.float32)
  params = np.array([1.0, 1.0, 1.0, 1.0, 1.0, np.inf], np.float32)
  ends = np.array([1, 4, 5])
  np.testing.assert_array_equal(train._nonfinite_groups(grads, params, ends),
                                [False, True, True])
  np.testing.assert_array_equal(
      train._nonfinite_groups(grads, np.ones(6, np.float32), ends), [False, True, False])
