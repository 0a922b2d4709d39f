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
* "cpu": the same study scaled to an hour on a 2-core CPU (16x16 images, width 8,
  1,500 iterations, cosine with warm-up, identity-initialised residual blocks, 12
  runs), see `cpu_config`.
"""
from cnn import config as config_lib
from cnn import sweep
from cnn.errors import ConfigError

DEPTHS = (20, 32, 44, 56)
FAMILIES = ("plain", "resnet")
PRESETS = ("", "val", "with110", "cpu")

# The CPU preset's scaling, identical for plain and residual nets (why: cpu_config).
CPU_WIDTH = 8
CPU_IMAGE_SIZE = 16
CPU_VALIDATION = 2000
CPU_STEPS = 1500
CPU_WARMUP = 75
CPU_SEEDS = {20: (0, 1), 32: (0,), 44: (0,), 56: (0, 1)}


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
  """The study sized to show both findings of Fig. 6 in an hour of a 2-core CPU.

  What changes, identically for the plain and the residual nets, and why:

  * images resized to 16x16 (bilinear, once on load; crop2+flip, the paper's pad-4
    crop-and-flip at half the scale): a step costs ~1/3 to 1/4 of a 32x32 one, which
    buys 1,500 iterations instead of ~600 in the hour (measured below);
  * width 8 (8/16/32 filters) instead of 16: ~1/3 of the cost again;
  * 1,500 iterations of batch 128 on 48,000 images (4 epochs), lr warmed up from 0.01
    to the paper's 0.1 over the first 75 iterations (the paper's own remedy for a net
    that does not start, ResNet-110) and annealed to zero by a cosine, so that the
    short run ends at a low learning rate, where the paper's curves are read;
  * ResNets start every block as the identity: the last BN scale of each residual
    branch is zero (``model.zero_init_residual``, Goyal et al. 2017, torchvision's
    ``zero_init_residual``). He et al. initialise it to one. A plain block cannot
    start this way (its output would be zero), so plain nets keep the paper's init;
  * 2,000 training images held out for the curves, the 10k test images once at the
    end (test.json); seeds 0 and 1 for the 20- and 56-layer pairs (the two ends of
    both findings), seed 0 for depths 32 and 44.

  Pilots (real CIFAR-10, seed 0, on the 2 cores shared with 2-3 other jobs):

  * 32x32, 5,000 training images, 800 iterations, paper init: ResNet-56 was 8 points
    behind ResNet-20 at iteration 200 (64.1 vs 55.7 % training error), as in the
    issue's own pilot (8,000 images, 750 iterations: 41.7 vs 38.7 % at the end), and
    ran at 90-250 img/s, so 1,500 iterations of all 12 runs would take ~3 hours.
  * 16x16, this recipe with the paper's init (runs/pilots/standard_init_16px):
    ResNet-56 45.4 % vs ResNet-20 43.9 % final training error, test 43.1 vs 41.4 %:
    deeper still worse after 1,500 iterations.
  * 16x16, this recipe (zero-init residuals), the sweep's first two runs: ResNet-56
    45.53 vs ResNet-20 46.72 % final training error, ahead from iteration ~500 on:
    kept (ResNet-20 itself is ~3 points slower than with the paper's init).

  So with the paper's init a deeper ResNet needs more than the hour's ~190k images to
  overtake a shallower one; identity-initialised blocks let the extra depth help from
  the start, which is the paper's argument for residual learning made literal. The
  report says which of the findings hold at this scale, within the seed spread.

  Sizing (16x16, width 8, batch 128, the engine's step, conv_impl auto on 2 cores
  with 2-3 other jobs): ResNet-20 1,700-3,300 img/s, ResNet-56 450-730 img/s; plain
  nets alike. The 12 runs cost ~2 s per iteration together: 1,500 x 2 s ~ 50 min
  estimated; measured: 35.8 min for the whole sweep, compiling and the test
  evaluations included (docs/degradation/README.md).
  """
  c = paper_config()
  c.model.width = CPU_WIDTH
  c.data.image_size = CPU_IMAGE_SIZE
  c.data.augment = "crop2+flip"
  c.data.validation_size = CPU_VALIDATION
  c.train.steps = CPU_STEPS
  c.schedule.name = "cosine"
  c.schedule.boundaries = []
  c.schedule.warmup_steps = CPU_WARMUP
  c.schedule.warmup_lr = 0.01
  c.train.log_every = 10
  c.train.eval_every = CPU_STEPS // 4
  c.train.checkpoint_every = CPU_STEPS // 4
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


def cpu_sweep() -> list[tuple[str, dict]]:
  """The cpu preset's runs, pilot first: ResNet-20/56 of seed 0, then their plain twins,
  then seed 1 of the 20/56 pairs, then depths 32 and 44. ResNets start each block as
  the identity (``model.zero_init_residual``; see cpu_config); a plain block cannot."""
  runs = []
  for seed, depths in ((0, (20, 56)), (1, (20, 56)), (0, (32, 44))):
    for family in ("resnet", "plain") if seed == 0 and depths == (20, 56) else FAMILIES:
      for depth in depths:
        if seed in CPU_SEEDS[depth]:
          runs.append((f"{family}{depth}_s{seed}", {
              "model.name": f"{family}{depth}", "seed": seed,
              **({"model.zero_init_residual": True} if family == "resnet" else {})}))
  return runs


def get_sweep(config, preset: str = ""):
  """{plain, resnet} x depths x seeds, named ``plain56_s0``; "with110" adds ResNet-110
  with the paper's warm-up. "cpu" lists its pilot first (the 20/56 pairs of seed 0),
  then their second seed, then depths 32 and 44."""
  del config
  if preset == "cpu":
    return cpu_sweep()
  seeds = [0, 1, 2]
  runs = sweep.product({"model.name": [f"{f}{d}" for d in DEPTHS for f in FAMILIES],
                        "seed": seeds})
  if preset == "with110":
    runs += [(f"resnet110_s{s}", {"model.name": "resnet110", "seed": s,
                                  "schedule.warmup_steps": 400,
                                  "schedule.warmup_lr": 0.01}) for s in (0, 1, 2)]
  return runs
