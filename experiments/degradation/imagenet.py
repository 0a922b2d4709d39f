"""The degradation study on ImageNet: plain-18/34 against ResNet-18/34 (He et al. 2016,
Table 2 and Fig. 4), for users with ImageNet and GPUs.

    python -m scripts.sweep --config experiments/degradation/imagenet.py \
        --root runs/deg_imagenet --config.data.data_dir=/data/tfds --executor slurm \
        --gpus_per_node 8
    python -m experiments.degradation.plot runs/deg_imagenet --out runs/deg_imagenet/fig4
    python -m experiments.degradation.report runs/deg_imagenet

He et al. Table 2, top-1 error (%) on the ImageNet validation set (10-crop testing):
plain-18 27.94, plain-34 28.54; ResNet-18 27.88, ResNet-34 25.03. The plain 34-layer
net is worse than the 18-layer one (the degradation problem); with shortcuts the order
reverses. These ResNets use option A shortcuts (identity, zero-padded where the width
doubles), so each has exactly the parameters of its plain twin. The study's report
evaluates a single centre crop, which costs ~1.5-2 points of top-1 error against the
paper's 10-crop numbers.

The recipe (section 3.4): images resized with the shorter side in [256, 480], a random
224x224 crop and horizontal flip (here: the ``imagenet`` augmentation, a random-resized
crop and flip, see cnn/data/augment.py), per-channel normalisation; BN after every
convolution, He initialisation; SGD with momentum 0.9, batch 256, weight decay 1e-4,
learning rate 0.1 divided by 10 when the error plateaus (``schedule.name="plateau"``
on the validation top-1 error, evaluated every epoch), 60e4 iterations; no dropout.
Data: ``tfds:imagenet2012`` (prepare it once with TFDS's manual download; see the
README); 1,281,167 training images, the 50,000 validation images as evaluation split.
"""
from cnn import config as config_lib
from cnn import sweep
from cnn.errors import ConfigError

IMAGES_PER_EPOCH = 1_281_167
BATCH = 256
DEPTHS = (18, 34)
FAMILIES = ("plain", "resnet")


PRESETS = ("",)   # no named presets


def get_config(preset: str = ""):
  if preset:
    raise ConfigError(f"experiments/degradation/imagenet.py has no preset {preset!r}; "
                      "use it without ':preset'.")
  c = config_lib.defaults()
  c.model.name = "resnet18"            # each run sets plain{d} / resnet{d}
  c.model.shortcut = "A"
  c.data.source = "tfds:imagenet2012"
  c.data.augment = "imagenet"
  c.data.image_size = (224, 224)
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.schedule.name = "plateau"
  c.schedule.monitor = "eval_top1_error"
  c.schedule.factor = 0.1
  c.schedule.patience = 2
  c.train.batch_size = BATCH
  c.train.eval_batch_size = 500
  c.train.steps = 600_000
  c.train.log_every = 500
  c.train.eval_every = IMAGES_PER_EPOCH // BATCH      # once an epoch (5,004 iterations)
  c.train.checkpoint_every = 5000
  c.train.log_grad_norms = True
  return c


def get_sweep(config):
  """{plain, resnet} x {18, 34}, one seed each (a run is ~120 epochs of ImageNet)."""
  del config
  return sweep.product({"model.name": [f"{f}{d}" for d in DEPTHS for f in FAMILIES],
                        "seed": [0]})
