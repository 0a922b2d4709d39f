"""Transfer learning: new head, frozen layers, per-group learning rates, features."""
import functools

import jax
import numpy as np
import optax
import pytest

from cnn import config as config_lib
from cnn import data as data_lib
from cnn import models
from cnn import train
from cnn import transfer
from cnn.errors import ConfigError

NEW_DIGITS = (7, 8, 9)      # the "new task": three classes the source run saw as 7-9


def tiny_config(source="digits", **train_overrides):
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.data.source = source
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.steps = 3
  c.train.log_every = 3
  c.train.eval_every = 3
  c.train.tensorboard = False
  c.train.quiet = True
  for key, value in train_overrides.items():
    c.train[key] = value
  return c


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """LeNet-5 trained a few steps on all ten digits: the 'pre-trained' network."""
  workdir = tmp_path_factory.mktemp("source")
  train.fit(tiny_config(steps=4, log_every=4, eval_every=4), workdir)
  return workdir


@pytest.fixture(scope="module")
def new_task(tmp_path_factory):
  """npz shards of the digits 7, 8, 9 relabelled 0, 1, 2 (a 3-class task)."""
  folder = tmp_path_factory.mktemp("new_task")
  ds = data_lib.load("digits")
  for name, split in (("train", ds.train), ("test", ds.test)):
    keep = np.isin(split.y, NEW_DIGITS)
    np.savez(folder / f"{name}.npz", x=split.x[keep], y=split.y[keep] - NEW_DIGITS[0])
  return f"npz:{folder}/train.npz|{folder}/test.npz"


def finetune_config(source_run, new_task, **transfer_kw):
  c = tiny_config(new_task)
  c.transfer.init_from = str(source_run)
  for key, value in transfer_kw.items():
    c.transfer[key] = value
  return c


def _warm_state(config):
  run = train.build_run(config)
  state, shardings = train.init_state(run)
  fresh = jax.device_get(state.params)
  return run, transfer.warm_start(state, run), shardings, fresh


# ----------------------------------------------------------------------------------
# Groups and the optimizer, by hand
# ----------------------------------------------------------------------------------

def test_layer_order_and_head_of_lenet():
  model = models.create("lenet5", num_classes=10)
  # LeNet-5: C1, C3, C5 convolutions, then F6 (84) and the output layer.
  assert transfer.layer_order(model, (32, 32, 1)) == ["conv1", "conv2", "conv3", "fc4",
                                                      "fc5"]
  assert transfer.head_name(model, (32, 32, 1)) == "fc5"


def test_labels_by_depth_by_regex_and_head():
  model = models.create("lenet5", num_classes=10)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32))["params"]
  labels = transfer.param_labels(params, reinit=transfer.reinit_pattern("auto", "fc5"),
                                 freeze="^fc4/", frozen_layers=("conv1", "conv2"))
  expected = {"conv1": "frozen", "conv2": "frozen", "conv3": "backbone", "fc4": "frozen",
              "fc5": "head"}
  for layer, group in expected.items():
    assert labels[layer] == {"kernel": group, "bias": group}, layer
  backbone = transfer.param_labels(params, reinit=transfer.reinit_pattern("auto", "fc5"),
                                   freeze="backbone")
  assert [backbone[k]["kernel"] for k in expected] == ["frozen"] * 4 + ["head"]


def test_per_group_sgd_steps_by_hand():
  """lr 0.5, backbone x0.1, gradient 2 everywhere, momentum 0.9 (optax: v = 0.9 v + g).

  step 1: head -0.5 * 2 = -1.0; backbone -0.1 * 1.0 = -0.1; frozen 0.
  step 2: v = 0.9 * 2 + 2 = 3.8; head -0.5 * 3.8 = -1.9; backbone -0.19; frozen 0.
  """
  params = {"conv1": {"kernel": np.ones(3, np.float32)},
            "conv2": {"kernel": np.ones(3, np.float32)},
            "fc5": {"kernel": np.ones(3, np.float32)}}
  labels = {"conv1": {"kernel": "frozen"}, "conv2": {"kernel": "backbone"},
            "fc5": {"kernel": "head"}}
  tx = transfer.make_optimizer(optax.sgd(0.5, momentum=0.9), labels, backbone_lr=0.1)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: np.full_like(p, 2.0), params)
  for expected in ({"conv1": 0.0, "conv2": -0.1, "fc5": -1.0},
                   {"conv1": 0.0, "conv2": -0.19, "fc5": -1.9}):
    updates, opt_state = tx.update(grads, opt_state, params)
    for layer, value in expected.items():
      np.testing.assert_allclose(updates[layer]["kernel"], value, rtol=1e-6)


def test_engine_step_applies_the_group_learning_rates(source_run, new_task):
  """One engine step with SGD at lr 0.1: the new head moves by -0.1 g, the copied
  layers by -0.1 * 0.5 g, where g is the gradient recomputed here on the same batch."""
  c = finetune_config(source_run, new_task, backbone_lr=0.5)
  run, state, shardings, _ = _warm_state(c)
  before = jax.device_get(state.params)
  step, _, device_data = train.compile_steps(run, shardings)
  after = jax.device_get(step(state, *device_data)[0].params)
  ds = run.dataset
  batch_fn = data_lib.make_train_batch_fn(len(ds.train), c.train.batch_size,
                                          augment="none", mean=ds.mean, std=ds.std,
                                          seed=c.seed)
  images, labels = batch_fn(*device_data, 0)
  loss = functools.partial(train.loss_fn, model=run.model, cfg=run.step_cfg)
  grads = jax.device_get(jax.jit(jax.grad(
      lambda p: loss(p, {}, images, labels, jax.random.key(0))[0]))(before))
  for layer in before:
    rate = 0.1 if layer == "fc5" else 0.1 * 0.5
    for name in before[layer]:
      np.testing.assert_allclose(after[layer][name] - before[layer][name],
                                 -rate * grads[layer][name], rtol=2e-3, atol=1e-7,
                                 err_msg=f"{layer}/{name}")


# ----------------------------------------------------------------------------------
# Fine-tuning runs end to end
# ----------------------------------------------------------------------------------

def test_new_head_has_the_new_class_count_and_frozen_layers_stay_bit_identical(
    source_run, new_task, tmp_path):
  c = finetune_config(source_run, new_task, freeze="backbone")
  _, _, _, fresh = _warm_state(c)
  train.fit(c, tmp_path)
  source, _, _ = transfer.read_variables(source_run)
  tuned, _, step = transfer.read_variables(tmp_path)
  assert step == 3
  assert tuned["fc5"]["kernel"].shape == (84, 3) and tuned["fc5"]["bias"].shape == (3,)
  assert source["fc5"]["kernel"].shape == (84, 10)
  for layer in ("conv1", "conv2", "conv3", "fc4"):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(tuned[layer][name], source[layer][name])
  assert not np.array_equal(tuned["fc5"]["kernel"], fresh["fc5"]["kernel"])
  assert not np.array_equal(tuned["fc5"]["bias"], fresh["fc5"]["bias"])


def test_freeze_depth_trains_only_the_deeper_layers(source_run, new_task, tmp_path):
  c = finetune_config(source_run, new_task, freeze_depth=2)
  train.fit(c, tmp_path)
  source, _, _ = transfer.read_variables(source_run)
  tuned, _, _ = transfer.read_variables(tmp_path)
  for layer in ("conv1", "conv2"):
    np.testing.assert_array_equal(tuned[layer]["kernel"], source[layer]["kernel"])
  for layer in ("conv3", "fc4"):
    assert not np.array_equal(tuned[layer]["kernel"], source[layer]["kernel"]), layer


# ----------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------

def test_extract_features_writes_penultimate_and_layer_features(source_run, new_task,
                                                                tmp_path):
  from scripts import extract_features
  ds = data_lib.load("digits")
  extract_features.main(["--workdir", str(source_run), "--out", str(tmp_path / "f")])
  with np.load(tmp_path / "f.npz") as f:
    # LeNet-5's F6 has 84 units (LeCun et al. 1998): the head's input.
    assert f["features"].shape == (len(ds.eval), 84)
    np.testing.assert_array_equal(f["labels"], ds.eval.y)
    assert str(f["layer"]) == "fc5"
    assert f["features"].min() >= 0.0        # after fc4's ReLU
  extract_features.main(["--workdir", str(source_run), "--out", str(tmp_path / "c.npz"),
                         "--layer", "conv1", "--source", new_task, "--split", "test"])
  with np.load(tmp_path / "c.npz") as f:
    n_new = int(np.isin(ds.test.y, NEW_DIGITS).sum())
    # conv1: 32 - 5 + 1 = 28 rows and columns, 6 maps.
    assert f["features"].shape == (n_new, 28, 28, 6)


# ----------------------------------------------------------------------------------
# Mistakes
# ----------------------------------------------------------------------------------

def test_copying_a_head_of_another_shape_names_it(source_run, new_task, tmp_path):
  c = finetune_config(source_run, new_task, reinit="")
  with pytest.raises(ConfigError, match=r"fc5/bias has shape \(10,\) in the checkpoint "
                                        r"but \(3,\) here"):
    _warm_state(c)


@pytest.mark.parametrize("key,value,needle", [
    ("freeze", "fc5", "both re-initialised .* and frozen"),
    ("freeze", "conv(", "not a valid regular expression"),
    ("freeze_depth", 9, "exceeds the 5 layers"),
    ("checkpoint", "newest", "Unknown transfer.checkpoint"),
    ("init_from", "/nonexistent/run", "holds no run"),
])
def test_bad_transfer_settings_are_one_sentence(source_run, new_task, key, value, needle):
  c = finetune_config(source_run, new_task)
  c.transfer[key] = value
  with pytest.raises(ConfigError, match=needle) as info:
    train.build_run(c)     # before anything is written
  assert "\n" not in str(info.value)


def test_unknown_transfer_key_is_refused():
  c = tiny_config()
  with pytest.raises(ConfigError, match="transfer.freeze"):
    config_lib.apply_override(c, "--config.transfer.freez=conv1")


def test_example_shards_hold_the_few_shot_task(tmp_path):
  from experiments.finetune import study
  counts = study.write_shards(tmp_path, "digits", [4], [0], data_dir=None)
  with np.load(tmp_path / "data" / "few4-seed0-train.npz") as f:
    np.testing.assert_array_equal(np.bincount(f["y"]), [4, 4, 4, 4, 4])
  with np.load(tmp_path / "data" / "pretrain-train.npz") as f:
    assert set(np.unique(f["y"])) == {0, 1, 2, 3, 4}
    assert counts["pretrain-train"] == len(f["y"])
  ds = data_lib.load("digits")
  assert counts["new-test"] == int((ds.test.y >= 5).sum())
