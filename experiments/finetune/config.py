"""Transfer learning on MNIST: LeNet-5 learns digits 0-4, then 5-9 from a few examples.

The course's recipe (optimisation lecture, "Pre-trained models"): keep the trained
backbone, replace the classifier, train the new head with the rest frozen, then
fine-tune the whole network with a smaller learning rate; against training from
scratch on the same few examples. `python -m experiments.finetune.run` runs all of it and
prints the table; its data are npz shards it writes under ``<root>/data``:

    pretrain-train.npz / pretrain-test.npz   digits 0-4 (labels 0..4)
    few<N>-seed<S>-train.npz                 N training images of each digit 5-9,
                                             drawn with seed S
    new-test.npz                             every test image of the digits 5-9

(labels 5..9 stored as 0..4, so both tasks have 5 classes). Presets:

    pretrain   LeNet-5 on digits 0-4 (about 2 epochs)
    head       from the pretrain run: new fc5, everything else frozen
    all        from the head run: every layer trained, learning rate 10x lower
    scratch    LeNet-5 from random weights on the few examples

By hand, with the shards in runs/transfer_mnist/data:

    python -m scripts.train --config experiments/finetune/config.py:head \\
        --config.transfer.init_from=runs/transfer_mnist/pretrain --workdir runs/head
"""
from cnn import config as config_lib
from cnn.errors import unknown_choice

ROOT = "runs/transfer_mnist"
PRESETS = ("pretrain", "head", "all", "scratch")


def few_shot_source(root: str, shots: int, seed: int = 0) -> str:
  return f"npz:{root}/data/few{shots}-seed{seed}-train.npz|{root}/data/new-test.npz"


def pretrain_source(root: str) -> str:
  return f"npz:{root}/data/pretrain-train.npz|{root}/data/pretrain-test.npz"


def get_config(preset: str = "head"):
  if preset not in PRESETS:
    raise unknown_choice("preset of experiments/finetune/config.py", preset, PRESETS)
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.optim.name = "momentum"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.schedule.name = "cosine"
  c.train.log_every = 50
  c.train.eval_batch_size = 1000
  c.train.tensorboard = False
  if preset == "pretrain":
    c.data.source = pretrain_source(ROOT)
    c.optim.learning_rate = 0.05
    c.train.batch_size = 128
    c.train.steps = 480              # 2 epochs of the 30,596 images of digits 0-4
    c.train.eval_every = 480
    return c
  # Few-shot runs: 10 images per class by default (50 examples, one batch an epoch).
  c.data.source = few_shot_source(ROOT, 10)
  c.train.batch_size = 50
  c.train.steps = 100
  c.train.eval_every = 100
  c.optim.learning_rate = 0.05
  if preset == "head":
    c.transfer.init_from = f"{ROOT}/pretrain"
    c.transfer.reinit = "auto"           # fc5: a new 5-way classifier
    c.transfer.freeze = "backbone"       # conv1..fc4 stay as trained on 0-4
  elif preset == "all":
    c.transfer.init_from = f"{ROOT}/head-10-seed0"
    c.transfer.reinit = ""               # every layer comes from the head run
    c.optim.learning_rate = 0.005        # "use a smaller learning rate when fine tuning"
  else:  # scratch: as many steps as head + all together
    c.train.steps = 200
    c.train.eval_every = 200
  return c
