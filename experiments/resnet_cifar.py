"""ResNets and their plain twins on CIFAR-10 with He et al. (2016) section 4.2's recipe.

    python -m scripts.train --config experiments/resnet_cifar.py:resnet56 --workdir runs/r56
    python -m scripts.train --config experiments/resnet_cifar.py:plain20 --workdir runs/p20

Batch 128, SGD momentum 0.9, weight decay 1e-4 (L2 in the loss), lr 0.1 divided by 10
at 32k and 48k iterations, 64k iterations; pad-4 random crop and horizontal flip;
per-channel normalisation. ResNet-110 warms up at 0.01 for 400 iterations. The paper
chose this schedule on a 45k/5k train/val split and reports test error when training
on all 50k (``data.validation_size=5000`` reproduces the held-out split).
Presets: resnet20/32/44/56/110/1202 and plain20/32/44/56/110; default resnet20.
"""
from cnn import config as config_lib

PRESETS = ("", *(f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)),
           *(f"plain{d}" for d in (20, 32, 44, 56, 110)))


def get_config(preset: str = "resnet20"):
  preset = preset or "resnet20"
  c = config_lib.defaults()
  residual = preset.startswith("resnet")
  depth = int(preset.removeprefix("resnet").removeprefix("plain"))
  c.model.name = "cifar_resnet"
  c.model.depth = depth
  c.model.residual = residual
  c.model.shortcut = "A"
  c.data.source = "cifar10"
  c.data.augment = "cifar"
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = [32000, 48000]
  c.schedule.decay = 0.1
  if depth >= 110:
    c.schedule.warmup_steps = 400
    c.schedule.warmup_lr = 0.01
  c.train.batch_size = 128
  c.train.steps = 64000
  c.train.log_every = 200
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
