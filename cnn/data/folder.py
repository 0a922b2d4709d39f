"""Your own images: ``folder:<train dir>[|<test dir>]``, one subfolder per class.

    my_data/train/cat/001.png  my_data/train/dog/002.jpg ...
    data.source = "folder:my_data/train|my_data/test"

Class names are the subfolder names, sorted (class i is the i-th name); a test folder
may hold a subset of them. Images (PNG, JPEG, BMP, GIF, WebP) are decoded once with
Pillow into uint8 arrays: grey if every image is grey, else RGB; resized (bilinear)
to ``data.image_size`` when it is set, which images of different sizes need. Relative
paths are read from ``data.data_dir`` when set, else from the working directory.
"""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np

from cnn.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def class_folders(root: pathlib.Path) -> list[pathlib.Path]:
  """The class subfolders of `root`, sorted by name; one sentence if there are none."""
  if not root.is_dir():
    raise ConfigError(f"Image folder {root} does not exist; data.source='folder:<train "
                      "dir>[|<test dir>]' needs one subfolder of images per class.")
  folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not folders:
    raise ConfigError(f"Image folder {root} has no class subfolders; put each class's "
                      "images in a subfolder named after it.")
  return folders


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _decode(path: pathlib.Path):
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ConfigError(f"{path} is not a readable image ({type(e).__name__}); remove or "
                      "replace it.") from None


def read_folder(root: pathlib.Path, classes: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None):
  """(images (N, H, W, C) uint8, labels (N,) int32, class names) of an image folder.

  `classes`: the class names labels refer to (a test folder's must be among its
  train folder's); default this folder's own.
  """
  folders = class_folders(root)
  names = list(classes) if classes is not None else [f.name for f in folders]
  decoded, labels = [], []
  for folder in folders:
    if folder.name not in names:
      raise ConfigError(f"Class folder {folder} has no counterpart among the training "
                        f"classes ({', '.join(names)}); rename or remove it.")
    for path in image_files(folder):
      decoded.append((path, _decode(path)))
      labels.append(names.index(folder.name))
  if not decoded:
    raise ConfigError(f"Image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                      "in its class subfolders.")
  grey = all(image.mode in ("L", "1", "I;16", "I") for _, image in decoded)
  sizes = {image.size for _, image in decoded}
  if size is None and len(sizes) > 1:
    shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
    raise ConfigError(f"Images in {root} have different sizes ({shown}, ...); set "
                      "data.image_size=(H, W) to resize them.")
  arrays = []
  for _, image in decoded:
    image = image.convert("L" if grey else "RGB")
    if size is not None and image.size != (size[1], size[0]):
      from PIL import Image  # pylint: disable=import-outside-toplevel
      image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image, np.uint8)
    arrays.append(array[..., None] if array.ndim == 2 else array)
  return np.stack(arrays), np.asarray(labels, np.int32), names


def resolve(path: str, data_dir: Optional[str]) -> pathlib.Path:
  """A folder path, relative ones read from `data_dir` when it is set."""
  p = pathlib.Path(path).expanduser()
  return p if p.is_absolute() or data_dir is None else pathlib.Path(data_dir) / p
