"""U-Net on the Oxford-IIIT Pets trimaps (pet, background, border), from TFDS.

    python -m scripts.train --config experiments/segmentation_pets.py --workdir runs/pets

Needs the dataset prepared once in array_record format (a network and TensorFlow):
``tfds build oxford_iiit_pet --file_format=array_record``; then point data.data_dir
(or $TFDS_DATA_DIR) at it. Images and trimaps are resized to 128x128 (bilinear /
nearest) and the trimap values 1, 2, 3 become classes 0, 1, 2 (cnn.data). The
U-Net has batch norm and width 32; random horizontal flips move image and mask
together. Preset ``fcn8s``: FCN-8s with a full-width VGG-16 backbone.
"""
import ml_collections

from cnn import config as config_lib
from cnn.errors import unknown_choice


PRESETS = ("", "fcn8s")


def get_config(preset: str = ""):
  c = config_lib.defaults()
  c.task = "segmentation"            # per-pixel loss, FCN's metrics (cnn/tasks.py)
  c.train.best_metric = "eval_mean_iou"
  c.train.best_mode = "max"
  c.model = ml_collections.ConfigDict({"name": "unet"})
  c.data.source = "tfds:oxford_iiit_pet"
  c.data.image_size = (128, 128)
  c.data.augment = "flip"
  c.model.name = "unet"
  c.model.width = 32
  c.model.depth = 4
  c.model.batch_norm = True
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.schedule.name = "cosine"
  c.train.batch_size = 32
  c.train.steps = 4000               # ~35 epochs of the 3,680 training images
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batch_size = 64
  if preset == "fcn8s":
    c.model = ml_collections.ConfigDict({"name": "fcn8s", "width": 64})
    c.optim.learning_rate = 1e-4
  elif preset:
    raise unknown_choice("preset of segmentation_pets", preset, ["fcn8s"])
  return c
