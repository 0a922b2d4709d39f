"""Faster R-CNN on digits pasted at random scales: the offline detection task.

    python -m scripts.train --config experiments/detection_digits.py --workdir runs/det
    python -m scripts.visualize detection --workdir runs/det --out docs/detection/boxes.png

1 to 4 real digits (MNIST, or scikit-learn's digits without it), each 12 to 30 pixels
tall, at random non-overlapping places on a 64x64 canvas; each is a box with its class
(`cnn.detection.data`). Faster R-CNN (`cnn.models.detection`) on a small ResNet (a
3x3/2 stem and two stages of one basic block, width 32: a 16x16 map at stride 4),
6 anchors per cell, RoIAlign 7x7, a 128-128 box head; Adam with a cosine schedule.
Evaluated on 500 held-out canvases of test digits with VOC's mAP@0.5 (the best
metric) and mAP@[.5:.95]; the measured numbers are in the README's "Detection"
section.

Preset ``smoke``: 200 canvases, 30 steps, for checking that it runs.
"""
import ml_collections

from cnn import config as config_lib
from cnn.errors import unknown_choice


PRESETS = ("", "smoke")


def get_config(preset: str = ""):
  c = config_lib.defaults()
  c.task = "detection"
  c.data.source = "canvas"            # canvas:mnist when ../shared/data/mnist exists
  c.data.canvas.size = 64
  c.data.canvas.min_digits = 1
  c.data.canvas.max_digits = 4
  c.data.canvas.train_size = 6000
  c.data.canvas.test_size = 500
  c.model = ml_collections.ConfigDict({
      "name": "faster_rcnn", "width": 32, "stage_sizes": (1, 1),
      "anchor_sizes": (16.0, 24.0, 32.0), "anchor_ratios": (1.0, 2.0),
      "roi_channels": 32, "hidden": 128})
  c.optim.name = "adam"
  c.optim.learning_rate = 2e-3
  c.schedule.name = "cosine"
  c.schedule.warmup_steps = 50
  c.train.batch_size = 16
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.eval_batch_size = 100
  c.train.best_metric = "eval_map50"
  c.train.best_mode = "max"
  if preset == "smoke":
    c.data.canvas.train_size = 200
    c.data.canvas.test_size = 50
    c.train.steps = 30
    c.schedule.warmup_steps = 5
    c.train.log_every = 10
    c.train.eval_every = 30
    c.train.eval_batch_size = 16     # splits over 8 simulated devices too
  elif preset:
    raise unknown_choice("preset of detection_digits", preset, ["smoke"])
  return c
