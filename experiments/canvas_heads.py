"""Deck 5's other output heads on the digit canvases (offline): which digits appear
(multi-label) and how many there are (regression).

    python -m scripts.train --config experiments/canvas_heads.py:multilabel --workdir runs/multilabel
    python -m scripts.train --config experiments/canvas_heads.py:regression --workdir runs/count

The canvases are those of experiments/segmentation_digits.py (1 to 3 real digits at
random, non-overlapping places on 48x48; MNIST when ../shared/data/mnist exists, else
scikit-learn's digits), labelled per image instead of per pixel (cnn/data/canvas.py):

* ``multilabel`` (``task="multilabel"``): a 10-way multi-hot vector of the classes
  present; ten sigmoid outputs, binary cross-entropy; scored by per-class average
  precision, their mean (mAP), exact-match and Hamming error at 0.5.
* ``regression`` (``task="regression"``): the number of digits (1-3); one linear
  output, mean squared error; scored by MSE, MAE and how often the rounded prediction
  is exact.

Both use the same small ResNet (CIFAR-style, 8 layers, width 16, batch norm; global
average pooling makes it work on 48x48) with Adam and a cosine schedule.
"""
import ml_collections

from cnn import config as config_lib
from cnn.errors import unknown_choice

PRESETS = ("multilabel", "regression")


def get_config(preset: str = "multilabel"):
  if preset not in PRESETS:
    raise unknown_choice("preset of canvas_heads", preset, PRESETS)
  c = config_lib.defaults()
  c.task = preset
  c.data.source = "canvas"
  c.model = ml_collections.ConfigDict(
      {"name": "cifar_resnet", "depth": 8, "width": 16, "residual": True})
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.schedule.name = "cosine"
  c.train.batch_size = 64
  c.train.steps = 800
  c.train.log_every = 100
  c.train.eval_every = 400
  c.train.best_metric = "eval_map" if preset == "multilabel" else "eval_mae"
  c.train.best_mode = "max" if preset == "multilabel" else "min"
  return c
