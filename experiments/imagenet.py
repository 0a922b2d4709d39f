"""The ImageNet recipes of the course's papers (for users with ImageNet and GPUs).

    python -m scripts.train --config experiments/imagenet.py:resnet50 \
        --config.data.data_dir=/data/tfds --workdir runs/imagenet_r50

Data: ``tfds:imagenet2012`` (prepare it once with TFDS's manual download, see the
README); AlexNet/ImageNet augmentation (random-resized crop + flip; centre crop for
evaluation). One epoch is 1,281,167 images.

| preset    | paper                      | batch | lr, schedule                                 | wd    | dropout |
|-----------|----------------------------|-------|----------------------------------------------|-------|---------|
| alexnet   | Krizhevsky et al. 2012     | 128   | 0.01, /10 when val error plateaus, 90 epochs | 5e-4  | 0.5     |
| zfnet     | Zeiler & Fergus 2014       | 128   | 0.01, /10 on plateau, 70 epochs              | 5e-4  | 0.5     |
| vgg16     | Simonyan & Zisserman 2015  | 256   | 0.01, /10 on plateau (3 times), 74 epochs    | 5e-4  | 0.5     |
| googlenet | Szegedy et al. 2015        | 256   | 0.01, -4 % every 8 epochs, aux heads 0.3     | 2e-4  | 0.4     |
| resnet18..152, plain18/34 | He et al. 2016 | 256 | 0.1, /10 on plateau, 60e4 iterations       | 1e-4  | none    |

(The course's ResNet slide says weight decay 1e-5; the paper, section 3.4, says 0.0001.)
"""
from cnn import config as config_lib
from cnn.errors import ConfigError

IMAGES_PER_EPOCH = 1_281_167
PRESETS = ("", "alexnet", "zfnet", "vgg11", "vgg13", "vgg16", "vgg19", "googlenet",
           *(f"resnet{d}" for d in (18, 34, 50, 101, 152)), "plain18", "plain34")


def _epochs(n: float, batch: int) -> int:
  return int(n * IMAGES_PER_EPOCH / batch)


def get_config(preset: str = "resnet50"):
  preset = preset or "resnet50"
  c = config_lib.defaults()
  c.model.name = preset
  c.data.source = "tfds:imagenet2012"
  c.data.augment = "imagenet"
  c.data.image_size = (227, 227) if preset == "alexnet" else (224, 224)
  c.optim.name = "momentum"
  c.optim.momentum = 0.9
  c.train.log_every = 500
  c.train.checkpoint_every = 5000
  if preset in ("alexnet", "zfnet"):
    batch, lr, wd, epochs = 128, 0.01, 5e-4, 90 if preset == "alexnet" else 70
    c.schedule.name = "plateau"
  elif preset.startswith("vgg"):
    batch, lr, wd, epochs = 256, 0.01, 5e-4, 74
    c.schedule.name = "plateau"
  elif preset == "googlenet":
    batch, lr, wd, epochs = 256, 0.01, 2e-4, 250
    c.model.aux_logits = True
    c.schedule.name = "exponential"
    c.schedule.every = _epochs(8, batch)
    c.schedule.rate = 0.96
  elif preset.startswith(("resnet", "plain")):
    batch, lr, wd = 256, 0.1, 1e-4
    epochs = 600_000 * batch / IMAGES_PER_EPOCH
    c.schedule.name = "plateau"
  else:
    raise ConfigError(f"Unknown ImageNet preset {preset!r}; use alexnet, zfnet, vgg11..vgg19, "
                      "googlenet, resnet18..resnet152, plain18 or plain34.")
  c.optim.learning_rate = lr
  c.optim.weight_decay = wd
  c.schedule.factor = 0.1
  c.schedule.patience = 2
  c.train.batch_size = batch
  c.train.steps = _epochs(epochs, batch)
  c.train.eval_every = _epochs(1, batch)
  return c
