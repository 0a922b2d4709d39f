"""Segmentation: the pixel loss and FCN's metrics by hand, the digit canvas, training."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from cnn import config as config_lib
from cnn import segmentation
from cnn import train
from cnn.errors import ConfigError

# A 3x3 label map with one ignored pixel, and a prediction (classes 0, 1, 2).
LABELS = np.array([[0, 0, 1], [1, 2, 2], [0, 1, -1]])
PREDS = np.array([[0, 1, 1], [1, 2, 0], [0, 1, 2]])


def test_pixel_cross_entropy_by_hand():
  """Pixel 1: logits (0, 0), label 0 -> ln 2; pixel 2: logits (ln 3, 0), label 0 ->
  p = 3/4, -ln(3/4); pixel 3 is labelled -1 and counts nowhere.
  Sum ln 2 + ln(4/3) = ln(8/3); mean over the 2 labelled pixels ln(8/3) / 2."""
  logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
  labels = jnp.array([[0, 0, -1]])
  total, count = segmentation.pixel_cross_entropy(logits, labels)
  assert float(total) == pytest.approx(math.log(8.0 / 3.0), rel=1e-6)
  assert float(count) == 2.0
  assert float(segmentation.mean_pixel_cross_entropy(logits, labels)) == pytest.approx(
      math.log(8.0 / 3.0) / 2, rel=1e-6)


def test_confusion_matrix_and_fcn_metrics_by_hand():
  """Counting the 8 labelled pixels of LABELS against PREDS (row: truth, col: prediction):

      n = [[2, 1, 0],     t = (3, 3, 2), column sums (3, 4, 1), hits (2, 3, 1)
           [0, 3, 0],
           [1, 0, 1]]

  pixel accuracy 6/8 = 0.75; mean accuracy (2/3 + 3/3 + 1/2) / 3 = 0.72222;
  IU: 2/(3+3-2) = 0.5, 3/(3+4-3) = 0.75, 1/(2+1-1) = 0.5 -> mean IU 0.58333;
  frequency-weighted IU (3*0.5 + 3*0.75 + 2*0.5) / 8 = 0.59375.
  """
  confusion = np.asarray(segmentation.confusion_matrix(jnp.array(LABELS),
                                                       jnp.array(PREDS), 3))
  np.testing.assert_array_equal(confusion, [[2, 1, 0], [0, 3, 0], [1, 0, 1]])
  s = segmentation.scores(confusion)
  assert s["pixel_accuracy"] == pytest.approx(0.75)
  assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
  assert s["iou"] == pytest.approx([0.5, 0.75, 0.5])
  assert s["mean_iou"] == pytest.approx(1.75 / 3)
  assert s["fw_iou"] == pytest.approx(4.75 / 8)


def test_absent_classes_leave_the_mean_but_false_positives_count():
  # A 4th class nobody uses has no IU (0 / 0) and does not change the mean.
  four = segmentation.scores(np.asarray(segmentation.confusion_matrix(
      jnp.array(LABELS), jnp.array(PREDS), 4)))
  assert four["iou"][3] is None and four["mean_iou"] == pytest.approx(1.75 / 3)
  # Predicting class 3 once where the truth is 1: IU_3 = 0 / (0 + 1 - 0) = 0 joins the
  # mean, and IU_1 becomes 2 / (3 + 3 - 2) = 0.5: mean (0.5 + 0.5 + 0.5 + 0) / 4.
  preds = PREDS.copy()
  preds[0, 2] = 3
  s = segmentation.scores(np.asarray(segmentation.confusion_matrix(
      jnp.array(LABELS), jnp.array(preds), 4)))
  assert s["iou"] == pytest.approx([0.5, 0.5, 0.5, 0.0])
  assert s["mean_iou"] == pytest.approx(1.5 / 4)


def test_confusion_weights_drop_padded_images():
  labels = jnp.stack([jnp.array(LABELS), jnp.zeros((3, 3), jnp.int32)])
  preds = jnp.stack([jnp.array(PREDS), jnp.ones((3, 3), jnp.int32)])
  weighted = segmentation.confusion_matrix(labels, preds, 3, jnp.array([1.0, 0.0]))
  np.testing.assert_array_equal(weighted, [[2, 1, 0], [0, 3, 0], [1, 0, 1]])


def test_place_digits_labels_ink_by_hand():
  """One 2x2 'digit' of class 4 filling a 2x2 canvas: pixels 255 and 200 reach half
  the maximum ink (127.5) and get label 4 + 1 = 5; 100 and 0 stay background."""
  digit = np.array([[[255, 100], [0, 200]]], np.uint8)
  images, labels = segmentation.place_digits(digit, np.array([4]), 1, size=2,
                                             min_digits=1, max_digits=1)
  np.testing.assert_array_equal(images[0, ..., 0], digit[0])
  np.testing.assert_array_equal(labels[0], [[5, 0], [0, 5]])


def test_canvas_is_deterministic_and_consistent():
  a = segmentation.load_canvas("canvas:digits", size=48, train_size=20, test_size=8, seed=3)
  b = segmentation.load_canvas("canvas:digits", size=48, train_size=20, test_size=8, seed=3)
  c = segmentation.load_canvas("canvas:digits", size=48, train_size=20, test_size=8, seed=4)
  np.testing.assert_array_equal(a.train.x, b.train.x)
  np.testing.assert_array_equal(a.train.y, b.train.y)
  assert not np.array_equal(a.train.x, c.train.x)
  assert a.train.x.shape == (20, 48, 48, 1) and a.train.y.shape == (20, 48, 48)
  assert a.num_classes == 11 and a.train.y.min() == 0 and a.train.y.max() <= 10
  # Labelled pixels carry ink; blank pixels are background.
  assert np.all(a.train.x[..., 0][a.train.y > 0] > 0)
  assert np.all(a.train.y[a.train.x[..., 0] == 0] == 0)
  # 1 to 3 digits of 24x24 cover at most 3 * 576 pixels of the 48x48 canvas.
  labelled = (a.train.y > 0).reshape(20, -1).sum(1)
  assert np.all(labelled > 0) and np.all(labelled <= 3 * 576)


def tiny_config(**kw):
  c = config_lib.load("experiments/segmentation_digits.py")
  c.data.source = "canvas:digits"
  c.model.width = 4
  c.model.depth = 2
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-2
  c.train.batch_size = 16
  c.train.steps = 8
  c.train.log_every = 2
  c.train.eval_every = 8
  c.train.eval_batch_size = 16
  c.train.tensorboard = False
  c.train.quiet = True
  c.data.canvas.size = 32
  c.data.canvas.max_digits = 1
  c.data.canvas.train_size = 64
  c.data.canvas.test_size = 16
  for key, value in kw.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def test_a_few_unet_steps_reduce_the_loss_and_report_iou(tmp_path):
  result = train.fit(tiny_config(), tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  assert 0.0 <= result["eval_mean_iou"] <= 1.0
  assert len(result["eval_iou"]) == 11
  final = json.loads((tmp_path / "final.json").read_text())
  assert final["step"] == 8 and final["status"] == "done"


def test_fcn8s_takes_a_training_step_on_the_canvas():
  import jax
  c = tiny_config()
  c.model = type(c.model)({"name": "fcn8s", "width": 2})
  run = train.build_run(c)
  state, shardings = train.init_state(run)
  before = jax.device_get(state.params["score_fr"]["kernel"])
  step, _, data = train.compile_steps(run, shardings)
  state, metrics = step(state, *data)
  assert math.isfinite(float(metrics["loss"]))
  # score_fr starts at zero (Long et al. 2015, section 4.1) and moves with the update.
  assert np.all(before == 0)
  assert np.any(jax.device_get(state.params["score_fr"]["kernel"]) != 0)


def test_config_mistakes_are_one_sentence():
  with pytest.raises(ConfigError, match="data.canvas.train_siz"):
    config_lib.apply_override(tiny_config(), "--config.data.canvas.train_siz=3")
  c = tiny_config()
  c.data.source = "digits"
  with pytest.raises(ConfigError, match="canvas"):
    train.build_run(c)
  c = tiny_config()
  c.data.canvas.size = 16
  with pytest.raises(ConfigError, match="do not fit a 16x16 canvas"):
    train.build_run(c)


def test_experiment_configs_load():
  for spec in ("experiments/segmentation_digits.py", "experiments/segmentation_digits.py:fcn8s",
               "experiments/segmentation_pets.py"):
    c = config_lib.load(spec)
    config_lib.validate(c)
    assert c.task == "segmentation"


TINY_OVERRIDES = ["--config.data.source=canvas:digits", "--config.model.width=4",
                  "--config.train.batch_size=16", "--config.train.steps=4",
                  "--config.train.log_every=2", "--config.train.eval_every=4",
                  "--config.train.eval_batch_size=16", "--config.train.tensorboard=False",
                  "--config.train.quiet=True", "--config.data.canvas.size=32",
                  "--config.data.canvas.max_digits=1", "--config.data.canvas.train_size=64",
                  "--config.data.canvas.test_size=16"]


def test_segmentation_trains_and_evaluates_through_the_clis(tmp_path, capsys):
  """scripts.train prints the task's summary (mean IoU) and metrics.jsonl holds it;
  scripts.evaluate scores the saved checkpoint with the same metric, the same value."""
  from scripts import evaluate as evaluate_cli, train as train_cli
  spec = "experiments/segmentation_digits.py"
  assert train_cli.main(["--config", spec, "--workdir", str(tmp_path), *TINY_OVERRIDES]) == 0
  assert "mean IoU" in capsys.readouterr().out
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = rows[-1]["eval_mean_iou"]
  assert evaluate_cli.main(["--workdir", str(tmp_path)]) == 0
  scored = json.loads(capsys.readouterr().out)
  assert scored["step"] == 4
  assert scored["mean_iou"] == pytest.approx(logged, abs=1e-6)
  assert len(scored["iou"]) == 11


def test_two_segmentation_seeds_in_one_program_score_each_model(tmp_path, monkeypatch):
  """k seeds of a segmentation config in one program: each model's eval row is its
  own (sliced from the stacked sums), equal to a separate one-device run's."""
  configs = []
  for seed in (0, 1):
    c = tiny_config(train__steps=2, train__eval_every=2, train__log_every=2)
    c.seed = seed
    configs.append(c)
  results = train.fit_group(configs, [tmp_path / "s0", tmp_path / "s1"],
                            multi_impl="unroll")
  assert [r["status"] for r in results] == ["done", "done"]
  import jax
  from cnn import sharding
  original = sharding.make_mesh   # the stacked models run on one device
  monkeypatch.setattr(sharding, "make_mesh",
                      lambda mp=1, devices=None: original(mp, jax.devices()[:1]))
  single = train.fit(configs[1], tmp_path / "alone")
  for key in ("eval_loss", "eval_mean_iou", "eval_pixel_accuracy", "train_loss"):
    assert results[1][key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
  assert results[0]["eval_loss"] != pytest.approx(single["eval_loss"], rel=1e-3)
