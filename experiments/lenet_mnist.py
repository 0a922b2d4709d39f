"""LeNet-5 on MNIST from local .npz shards (../shared/data/mnist, or data.data_dir).

    python -m scripts.train --config experiments/lenet_mnist.py --workdir runs/lenet_mnist

Modern LeNet-5 (ReLU, max-pool), SGD with momentum and a cosine schedule over three
epochs; >= 99.0 % test accuracy. Preset ``classic``: tanh and average pooling.
"""
from cnn import config as config_lib


def get_config(preset: str = ""):
  c = config_lib.defaults()
  c.model.name = "lenet5_classic" if preset == "classic" else "lenet5"
  c.data.source = "mnist"
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.05
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.schedule.name = "cosine"
  c.train.batch_size = 128
  c.train.steps = 1400          # ~3 epochs of 60k
  c.train.log_every = 100
  c.train.eval_every = 700
  return c
