"""Your own images: ``folder:<train dir>[|<test dir>]``, one subfolder per class.

    my_data/train/cat/001.png  my_data/train/dog/002.jpg ...
    data.source = "folder:my_data/train|my_data/test"

Class names are the subfolder names, sorted (class i is the i-th name); a test folder
may hold a subset of them. Images (PNG, JPEG, BMP, GIF, WebP) are decoded once with
Pillow into uint8 arrays: grey if every image is grey, else RGB; resized (bilinear)
to ``data.image_size`` when it is set, which images of different sizes need. Relative
paths are read from ``data.data_dir`` when set, else from the working directory.
Folders whose decoded images would exceed ``sources.MAX_IN_MEMORY_BYTES`` (or any
folder, with ``load(..., stream=True)``) are streamed instead: `stream_folder` keeps
the file list and labels in memory and decodes each image when a batch needs it.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cnn.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# Pillow modes held as one grey channel; every other mode becomes RGB.
GREY_MODES = ("L", "1", "I;16", "I")

# A streamed folder decides grey or RGB, and its image size, from the headers of this
# many images spread evenly over it (reading every header of a large folder is slow).
HEADER_SAMPLE = 512


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


def list_images(root: pathlib.Path, classes: Optional[Sequence[str]] = None
                ) -> tuple[list[pathlib.Path], np.ndarray, list[str]]:
  """(image paths, int32 labels, class names) of an image folder, nothing decoded.

  `classes`: the class names labels refer to (a test folder's must be among its
  train folder's); default this folder's own.
  """
  folders = class_folders(root)
  names = list(classes) if classes is not None else [f.name for f in folders]
  paths, labels = [], []
  for folder in folders:
    if folder.name not in names:
      raise ConfigError(f"Class folder {folder} has no counterpart among the training "
                        f"classes ({', '.join(names)}); rename or remove it.")
    for path in image_files(folder):
      paths.append(path)
      labels.append(names.index(folder.name))
  if not paths:
    raise ConfigError(f"Image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}) "
                      "in its class subfolders.")
  return paths, np.asarray(labels, np.int32), names


def _unreadable(path: pathlib.Path, error: Exception) -> ConfigError:
  return ConfigError(f"{path} is not a readable image ({type(error).__name__}); remove or "
                     "replace it.")


def _different_sizes(root: pathlib.Path, sizes) -> ConfigError:
  shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
  return ConfigError(f"Images in {root} have different sizes ({shown}, ...); set "
                     "data.image_size=(H, W) to resize them.")


def _decode(path: pathlib.Path):
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise _unreadable(path, e) from None


def _header(path: pathlib.Path) -> tuple[str, tuple[int, int]]:
  """(Pillow mode, (width, height)) of an image, from its header: no pixels decoded."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      return image.mode, image.size
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise _unreadable(path, e) from None


def _to_array(image, grey: bool, size: Optional[tuple[int, int]]) -> np.ndarray:
  """A decoded Pillow image as uint8 (H, W, C): grey or RGB, resized to `size`."""
  image = image.convert("L" if grey else "RGB")
  if size is not None and image.size != (size[1], size[0]):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    image = image.resize((size[1], size[0]), Image.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def read_folder(root: pathlib.Path, classes: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None):
  """(images (N, H, W, C) uint8, labels (N,) int32, class names) of an image folder.

  `classes`: as for `list_images`.
  """
  paths, labels, names = list_images(root, classes)
  decoded = [_decode(path) for path in paths]
  grey = all(image.mode in GREY_MODES for image in decoded)
  sizes = {image.size for image in decoded}
  if size is None and len(sizes) > 1:
    raise _different_sizes(root, sizes)
  return np.stack([_to_array(image, grey, size) for image in decoded]), labels, names


def decoded_bytes(paths: Sequence[pathlib.Path], size: Optional[tuple[int, int]] = None,
                  channels: Optional[int] = None) -> int:
  """About how many bytes the images at `paths` take decoded: their count times the
  pixels of `size` (default the first image's) times `channels` (default 1 if the
  first image is grey, else 3), read from the first image's header only."""
  if size is None or channels is None:
    mode, (width, height) = _header(paths[0])
    size = size or (height, width)
    channels = channels or (1 if mode in GREY_MODES else 3)
  return len(paths) * size[0] * size[1] * channels


class ImageFiles:
  """The records of a streamed folder: ``files[i]`` is ``(path, label)``. The labels
  are held in memory (they are cheap), the images stay on disk."""

  def __init__(self, paths: Sequence[pathlib.Path], labels: np.ndarray):
    self.paths, self.labels = list(paths), np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> tuple[pathlib.Path, int]:
    return self.paths[i], int(self.labels[i])


def stream_folder(root: pathlib.Path, classes: Optional[Sequence[str]] = None,
                  size: Optional[tuple[int, int]] = None
                  ) -> tuple[ImageFiles, Callable[[Any], tuple[np.ndarray, int]],
                             tuple[int, int], list[str]]:
  """(files, decode, image size (H, W), class names) of a folder read image by image.

  Grey or RGB, and without `size` the image size, are decided from the headers of up
  to HEADER_SAMPLE images spread evenly over the folder (every image of a smaller
  folder): grey only if every sampled image is grey, else RGB (an unsampled colour
  image of a grey folder is turned grey). ``decode((path, label))`` gives the uint8
  (H, W, C) image, resized to `size`, and the label; an unreadable file, or without
  `size` an image of another size, is the in-memory path's one-sentence ConfigError,
  raised when it is decoded. `classes`: as for `list_images`.
  """
  paths, labels, names = list_images(root, classes)
  step = max(1, len(paths) // HEADER_SAMPLE)
  heads = [_header(path) for path in paths[::step][:HEADER_SAMPLE]]
  grey = all(mode in GREY_MODES for mode, _ in heads)
  sizes = {wh for _, wh in heads}
  if size is None and len(sizes) > 1:
    raise _different_sizes(root, sizes)
  width, height = next(iter(sizes))
  image_size = size or (height, width)

  def decode(record: tuple[pathlib.Path, int]) -> tuple[np.ndarray, int]:
    path, label = record
    image = _decode(path)
    if size is None and image.size != (width, height):
      raise _different_sizes(root, {image.size, (width, height)})
    return _to_array(image, grey, size), label

  return ImageFiles(paths, labels), decode, image_size, names


def resolve(path: str, data_dir: Optional[str]) -> pathlib.Path:
  """A folder path, relative ones read from `data_dir` when it is set."""
  p = pathlib.Path(path).expanduser()
  return p if p.is_absolute() or data_dir is None else pathlib.Path(data_dir) / p
