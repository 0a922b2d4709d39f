"""U-Net on digits pasted on a canvas: an 11-class segmentation task built offline.

    python -m cnn.segmentation --config experiments/segmentation_digits.py --workdir runs/seg

1 to 3 real digits (MNIST, or scikit-learn's digits without it) at random places on a
64x64 canvas; every pixel is background (0) or 1 + its digit's class (see
cnn/segmentation.py). A small U-Net (width 8, 3 poolings: 8-16-32-64 channels) with
Adam. Preset ``fcn8s``: FCN-8s on a narrow VGG-16 backbone instead.
"""
from cnn import segmentation


def get_config(preset: str = ""):
  c = segmentation.defaults()
  c.data.source = "canvas"            # canvas:mnist when ../shared/data/mnist exists
  c.model.name = "unet"
  c.model.width = 8
  c.model.depth = 3
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.schedule.name = "cosine"
  c.train.batch_size = 32
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.eval_batch_size = 100
  c.segmentation.train_size = 6000
  c.segmentation.test_size = 500
  if preset == "fcn8s":
    c.model = type(c.model)({"name": "fcn8s", "width": 8, "dropout": 0.0})
  elif preset:
    from cnn.errors import unknown_choice
    raise unknown_choice("preset of segmentation_digits", preset, ["fcn8s"])
  return c
