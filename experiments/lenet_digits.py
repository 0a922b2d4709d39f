"""LeNet-5 on scikit-learn's bundled digits: the README's main job (offline, ~1 min).

1,797 real 8x8 handwritten digits, upsampled and padded to LeNet's 32x32 input; a fixed
80/20 split (1,437 training images). With so few images LeNet-5 memorises the training
set within 400 steps, so training uses random shifts of up to 2 pixels
(``data.augment="shift"``): 98.61 % test accuracy after 600 steps (without them,
96–97 %).
"""
from cnn import config as config_lib

# No named presets: cnn.config.load refuses ':anything'.
PRESETS = ("",)


def get_config(preset: str = ""):
  del preset
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.data.source = "digits"
  c.data.augment = "shift"
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.05
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.schedule.name = "cosine"
  c.train.batch_size = 64
  c.train.steps = 600
  c.train.log_every = 100
  c.train.eval_every = 300
  return c
