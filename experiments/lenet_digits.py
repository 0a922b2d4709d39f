"""LeNet-5 on scikit-learn's bundled digits: the README's main job (offline, ~1 min).

1,797 real 8x8 handwritten digits, upsampled and padded to LeNet's 32x32 input; a fixed
80/20 split. Reaches >= 97 % test accuracy on 2 CPU cores.
"""
from cnn import config as config_lib


def get_config(preset: str = ""):
  del preset
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.data.source = "digits"
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
