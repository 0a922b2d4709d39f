"""The degradation study: plain nets against ResNets of the same depth on CIFAR-10
(He et al. 2016, "Deep Residual Learning for Image Recognition", Fig. 6 and Table 6).

    python -m scripts.sweep --config experiments/degradation/config.py \
        --root runs/degradation
    python -m scripts.sweep --config experiments/degradation/config.py:cpu \
        --root runs/degradation
    python -m experiments.degradation.plot runs/degradation --out docs/degradation/fig6
    python -m experiments.degradation.report runs/degradation \
        --out docs/degradation/report.md

The grid (`get_sweep`): {plain, residual} x depth {20, 32, 44, 56} x seeds, model names
``plain{depth}`` / ``resnet{depth}`` (cnn/models/resnet.py), run names such as
``plain56_s0``. Option A shortcuts (identity, zero-padded where the width doubles), so
a plain net and the ResNet of the same depth have exactly the same parameters and
differ only in the additions. Per-stage gradient norms are logged
(``train.log_grad_norms``) for the "why plain nets degrade" figure.

The paper's recipe (section 4.2), preset "" (the default): batch 128, SGD with
momentum 0.9, weight decay 1e-4 (L2 in the loss), learning rate 0.1 divided by 10 at
32k and 48k iterations, 64k iterations; 4-pixel padding + random 32x32 crop + random
horizontal flip; per-channel normalisation; He initialisation; BN after every conv;
width 16 (16/32/64 filters in the three stages).

Validation vs test: the paper chose its schedule on a 45k/5k train/validation split
and reports Table 6's test error after training on all 50k images. Preset "" does the
latter: it trains on the 50k and evaluates on the 10k test images (every 1,000
iterations, for the Fig. 6 curves). Preset "val" trains on 45k and evaluates on the
5k held out (the split chosen by the run's seed, the same for the plain and residual
run of a seed), then once on the test set at the end (test.json, by scripts.sweep).

Presets:

* "" (paper): depths 20/32/44/56, seeds 0, 1, 2: 24 runs of 64k iterations.
* "val": as "", on the 45k/5k split.
* "with110": as "", plus ResNet-110 (lr 0.01 for the first 400 iterations, as the
  paper warms it up; the paper shows no plain-110).
* "cpu": the same study scaled to about an hour on a 2-core CPU, see `cpu_config`.
"""
from cnn import config as config_lib
from cnn import sweep
from cnn.errors import ConfigError

DEPTHS = (20, 32, 44, 56)
FAMILIES = ("plain", "resnet")
PRESETS = ("", "val", "with110", "cpu")

# The CPU preset's scaling, identical for plain and residual nets (sizing measured on
# this machine: see cpu_config).
CPU_WIDTH = 8
CPU_STEPS = 200
CPU_VALIDATION = 2000


def paper_config() -> config_lib.ml_collections.ConfigDict:
  """He et al. section 4.2 on the full training set, evaluated on the test set."""
  c = config_lib.defaults()
  c.model.name = "resnet20"            # each run sets plain{d} / resnet{d}
  c.model.width = 16
  c.model.shortcut = "A"
  c.model.conv_impl = "auto"           # the fastest convolution for the backend
  c.data.source = "cifar10"
  c.data.augment = "cifar"
  c.optim.name = "momentum"
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = [32000, 48000]
  c.schedule.decay = 0.1
  c.train.batch_size = 128
  c.train.eval_batch_size = 500
  c.train.steps = 64000
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 2000
  c.train.log_grad_norms = True
  return c


def cpu_config() -> config_lib.ml_collections.ConfigDict:
  """The same study sized for about an hour of a shared 2-core CPU.

  What changes, identically for the plain and the residual nets:

  * width 8 instead of 16 (8/16/32 filters; ~1/4 of the multiply-adds);
  * 200 iterations (25,600 images, about half an epoch) instead of 64,000, with the
    learning rate divided by 10 at the same fractions of training (50 % and 75 %:
    iterations 100 and 150);
  * evaluation on 2,000 held-out training images every 40 iterations (training on the
    other 48,000), and once on the 10k test images at the end (test.json);
  * one seed.

  Everything else is the paper's recipe, batch 128 and learning rate 0.1 included.
  Half an epoch only shows the start of training. He et al. found the deeper plain
  net's training error higher throughout training (ImageNet, section 4.1; "similar"
  on CIFAR-10, Fig. 6), so the plain-net ordering can show this early; the ResNets'
  "deeper is better" needs far longer training than this.

  Sizing, measured here while 4-7 other jobs shared the 2 cores (load 9-15): a
  jitted train step of ResNet-20 at width 8, batch 128, took 1.0-3.0 s (ResNet-56 and
  plain-56 about 2.8x that); compiling one model's step took 1-4 minutes. The 8 runs
  (20+32+44+56 layers, twice) cost ~7.6 ResNet-20 steps per iteration: 200 x 7.6 x
  ~1.5-2 s ~ 40-50 min, plus ~10 min of compiling and evaluating. Measured: the whole
  sweep took 72.6 min here (load falling from ~10 to ~5 during it); on the idle
  machine a ResNet-20 step takes ~0.2 s (619 img/s, benchmarks/benchmark_multi.py), so
  expect roughly a quarter of that there (an estimate, not a run).
  """
  c = paper_config()
  c.model.width = CPU_WIDTH
  c.train.steps = CPU_STEPS
  c.schedule.boundaries = [CPU_STEPS // 2, CPU_STEPS * 3 // 4]
  c.data.validation_size = CPU_VALIDATION
  c.train.log_every = 10
  c.train.eval_every = CPU_STEPS // 5
  c.train.checkpoint_every = CPU_STEPS // 5
  c.train.keep_checkpoints = 1
  c.train.tensorboard = False
  return c


def get_config(preset: str = ""):
  if preset not in PRESETS:
    raise ConfigError(f"Unknown preset {preset!r} of experiments/degradation/config.py; "
                      "use '' (the paper's recipe), 'val', 'with110' or 'cpu'.")
  if preset == "cpu":
    return cpu_config()
  c = paper_config()
  if preset == "val":
    c.data.validation_size = 5000
  return c


def get_sweep(config, preset: str = ""):
  """{plain, resnet} x depths x seeds, named ``plain56_s0``; "with110" adds ResNet-110
  with the paper's warm-up."""
  del config
  seeds = [0] if preset == "cpu" else [0, 1, 2]
  runs = sweep.product({"model.name": [f"{f}{d}" for d in DEPTHS for f in FAMILIES],
                        "seed": seeds})
  if preset == "with110":
    runs += [(f"resnet110_s{s}", {"model.name": "resnet110", "seed": s,
                                  "schedule.warmup_steps": 400,
                                  "schedule.warmup_lr": 0.01}) for s in (0, 1, 2)]
  return runs
