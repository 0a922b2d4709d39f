"""The multi-label and regression heads (deck 5): their metrics by hand and against
scikit-learn, the canvas labels, and a few training steps of each through the engine."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cnn import config as config_lib
from cnn import metrics
from cnn import tasks
from cnn import train
from cnn.data import canvas


def test_average_precision_by_hand_and_against_sklearn():
  # Ranked: pos (P=1/1), neg, pos (P=2/3), neg, pos (P=3/5): AP = (1 + 2/3 + 3/5) / 3.
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  labels = np.array([1, 0, 1, 0, 1])
  assert metrics.average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
  rng = np.random.default_rng(0)
  for _ in range(5):   # ties included: scores on a coarse grid
    s = rng.integers(0, 6, 40) / 5.0
    y = rng.integers(0, 2, 40)
    assert metrics.average_precision(s, y) == pytest.approx(average_precision_score(y, s))
  assert np.isnan(metrics.average_precision(scores, np.zeros(5)))


def test_multilabel_scores_by_hand():
  scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
  labels = np.array([[1, 0], [0, 1], [0, 0]])
  out = metrics.multilabel_scores(scores, labels)
  # class 0: the positive is ranked first (AP 1); class 1: its positive ranks first too.
  assert out["ap"] == [1.0, 1.0] and out["map"] == 1.0
  # at 0.5: row 1 predicts class 0 wrongly -> 1 of 3 rows wrong, 1 of 6 entries wrong.
  assert out["exact_match_error"] == pytest.approx(1 / 3)
  assert out["hamming_error"] == pytest.approx(1 / 6)


def test_sigmoid_cross_entropy_by_hand():
  z = np.array([0.0, 2.0, -3.0])
  y = np.array([1, 0, 0])
  expected = [np.log(2), np.log(1 + np.exp(2)), np.log(1 + np.exp(-3))]
  np.testing.assert_allclose(np.asarray(metrics.sigmoid_cross_entropy(z, y)), expected,
                             rtol=1e-6)


def test_canvas_targets_by_hand():
  masks = np.zeros((2, 4, 4), np.int32)
  masks[0, 0, 0] = 1 + 3            # a 3
  masks[0, 2, 2] = 1 + 7            # a 7
  masks[1, 1, 1] = 1 + 3            # two 3s count once as a label, twice as a count
  out = canvas.canvas_targets(masks, np.array([2, 2]), "multilabel")
  assert out.tolist() == [[0, 0, 0, 1, 0, 0, 0, 1, 0, 0], [0, 0, 0, 1] + [0] * 6]
  assert canvas.canvas_targets(masks, np.array([2, 2]), "count").tolist() == [2, 2]


def test_canvas_labels_match_the_segmentation_canvases():
  kw = dict(size=32, train_size=12, test_size=4, max_digits=3)
  seg = canvas.load_canvas("canvas:digits", **kw)
  multi = canvas.load_canvas("canvas:digits", target="multilabel", **kw)
  count = canvas.load_canvas("canvas:digits", target="count", **kw)
  np.testing.assert_array_equal(seg.train.x, multi.train.x)
  for mask, labels, n in zip(seg.train.y, multi.train.y, count.train.y):
    assert set(np.unique(mask[mask > 0]) - 1) == set(np.flatnonzero(labels))
    assert 1 <= n <= 3 and labels.sum() <= n
  assert multi.num_classes == 10 and count.num_classes == 1


def _tiny(preset: str):
  c = config_lib.load(f"experiments/canvas_heads.py:{preset}")
  c.data.source = "canvas:digits"
  c.data.canvas.size, c.data.canvas.train_size, c.data.canvas.test_size = 32, 64, 20
  c.model.width = 4
  c.train.batch_size, c.train.steps, c.train.log_every = 16, 6, 3
  c.train.eval_every, c.train.eval_batch_size = 6, 16
  c.train.tensorboard, c.train.quiet = False, True
  return c


@pytest.mark.parametrize("preset,keys", [
    ("multilabel", ("eval_map", "eval_exact_match_error", "eval_hamming_error")),
    ("regression", ("eval_mae", "eval_mse", "eval_rounded_error"))])
def test_heads_train_through_the_engine(tmp_path, preset, keys):
  result = train.fit(_tiny(preset), tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  for key in keys:
    assert key in result and np.isfinite(result[key])
  assert tasks.get(preset).summary(result).startswith("step 6:")
  if preset == "regression":   # MSE >= MAE^2 (Jensen), both of the same errors
    assert result["eval_mse"] >= result["eval_mae"] ** 2 - 1e-9
