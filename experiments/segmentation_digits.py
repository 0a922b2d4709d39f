"""U-Net on digits pasted on a canvas: an 11-class segmentation task built offline.

    python -m scripts.train --config experiments/segmentation_digits.py --workdir runs/seg
    python -m scripts.visualize segmentation --workdir runs/seg --out seg.png

1 to 3 real digits (MNIST, or scikit-learn's digits without it) at random places on a
48x48 canvas; every pixel is background (0) or 1 + its digit's class (see
cnn/data/canvas.py). A small U-Net (width 16, 2 poolings: 16-32-64 channels, batch
norm, 0.12 M parameters) with Adam and a cosine schedule, 600 steps of 32 canvases:
mean IU 77.5 % on the 500 test canvases (pixel accuracy 98.8 %), about 4 CPU-minutes
on 2 cores. With width 8 and 3 poolings the top of the decoder has only 8 channels
for 11 classes, and after 1,000 steps half the digit classes were still never
predicted (mean IU 34.6 %).

Preset ``fcn8s``: FCN-8s on a narrow VGG-16 backbone (width 8) instead; its finest
scores are at 1/8 of the resolution (6x6 maps for a 48x48 canvas), upsampled 8x.

Preset ``segnet``: SegNet's encoder-decoder (cnn/models/segmentation.py), the first 3
VGG-16 stages at width 16 (16-32-64 channels, 7 + 7 convolutions with batch norm,
0.22 M parameters); the decoder upsamples only by max-unpooling with the encoder's
switches (deck 2's unpooling), no skip features. It starts more slowly than the
U-Net, so it trains for 1,200 steps: mean IU 87.9 % on the 500 test canvases (pixel
accuracy 99.0 %; 17.7 % after 300 steps, 67.3 % after 600), about 12 minutes on the
shared 2-core CPU. With the default 600-step cosine schedule it reached 38.2 %.

    python -m scripts.train --config experiments/segmentation_digits.py:segnet \
        --workdir runs/segnet
"""
import ml_collections

from cnn import config as config_lib
from cnn.errors import unknown_choice


PRESETS = ("", "fcn8s", "segnet")


def get_config(preset: str = ""):
  c = config_lib.defaults()
  c.task = "segmentation"            # per-pixel loss, FCN's metrics (cnn/tasks.py)
  c.train.best_metric = "eval_mean_iou"
  c.train.best_mode = "max"
  c.data.source = "canvas"            # canvas:mnist when ../shared/data/mnist exists
  c.model = ml_collections.ConfigDict(
      {"name": "unet", "width": 16, "depth": 2, "batch_norm": True})
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-2
  c.schedule.name = "cosine"
  c.train.batch_size = 32
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.eval_batch_size = 100
  c.data.canvas.size = 48
  c.data.canvas.train_size = 6000
  c.data.canvas.test_size = 500
  if preset == "fcn8s":
    c.model = ml_collections.ConfigDict({"name": "fcn8s", "width": 8, "dropout": 0.0})
    c.optim.learning_rate = 1e-3
  elif preset == "segnet":
    c.model = ml_collections.ConfigDict(
        {"name": "segnet", "width": 16, "depth": 3, "batch_norm": True})
    c.train.steps = 1200
    c.train.eval_every = 300
  elif preset:
    raise unknown_choice("preset of segmentation_digits", preset, ["fcn8s", "segnet"])
  return c
