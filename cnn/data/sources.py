"""Data sources: a config string in, uint8 NHWC images and int32 targets out.

    ds = load("digits")                 # scikit-learn's 1,797 8x8 digits, offline
    ds = load("mnist")                  # npz shards under the data folder
    ds = load("npz:/data/x/train-*.npz|/data/x/test-*.npz")
    ds = load("cifar10", validation_size=5000)          # He et al.'s 45k/5k split
    ds = load("tfds:cifar100")          # tensorflow-datasets, NumPy-only path
    ds = load("tfds:imagenet2012")      # streamed: too big to hold in memory
    ds = load("tfds:oxford_iiit_pet", task="segmentation", image_size=128)

The grammar of `source`:

* ``digits``: `sklearn.datasets.load_digits` (1,797 real 8x8 scans, values 0..16), scaled
  to 0..255, upsampled bilinearly 3x to 24x24 and centred on a 32x32 canvas (4 zero
  pixels each side), the way LeNet-5 sees a digit in a larger field. The test split is
  a fixed 20% of each class, picked by ``np.random.default_rng(0)``; it never changes
  with `seed`.
* ``npz:<train glob>[|<test glob>]``: shards holding ``x`` (uint8, NHWC or NHW) and ``y``
  (integer labels), concatenated in sorted file-name order. Relative globs are read
  under `data_dir` (else the working directory). Without a test glob, give
  `validation_size` and evaluate on the carved-out part.
* ``mnist`` / ``cifar10``: shortcuts for ``npz:<root>/<name>/train-*.npz|<root>/<name>/test-*.npz``
  with `root` = `data_dir`, else ``$CNN_DATA_DIR``, else ``../shared/data`` beside the repo.
* ``folder:<train dir>[|<test dir>]``: your own images, one subfolder per class (see
  `cnn.data.folder`).
* ``tfds:<name>[:<train split>[|<eval split>]]``: a tensorflow-datasets dataset read with
  ``tfds.data_source`` (array_record files, no TensorFlow), e.g.
  ``tfds:cifar10:train[:45000]|train[45000:]``. Splits default to train and test
  (validation for imagenet2012). `data_dir` (or ``$TFDS_DATA_DIR``) is where the prepared
  dataset lives; nothing is ever downloaded here: an unprepared dataset is a ConfigError
  that says how to prepare it.

Datasets whose images have no fixed size (imagenet2012) are streamed by default: their
`Split` wraps the random-access source and decodes on the host, see
`cnn.data.pipeline.StreamingBatches`. So are TFDS sets and image folders whose decoded
images would exceed MAX_IN_MEMORY_BYTES. Everything else is read into memory.

`task="segmentation"` (oxford_iiit_pet) makes the targets per-pixel masks (N, H, W)
instead of labels: trimap values 1 (pet), 2 (background), 3 (border) become classes
0, 1, 2. Masks are resized with nearest neighbours, images bilinearly, to `image_size`.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
import pathlib
import zipfile
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cnn.data import folder as folder_lib
from cnn.errors import ConfigError, unknown_choice

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

# Named local npz datasets and their fixed class counts.
NPZ_SHORTCUTS = {"mnist": 10, "cifar10": 10}

# Class counts of the datasets this module knows by name; labels must fit them.
KNOWN_NUM_CLASSES = {
    "digits": 10, "mnist": 10, "cifar10": 10, "fashion_mnist": 10, "cifar100": 100,
    "svhn_cropped": 10, "imagenet2012": 1000, "oxford_iiit_pet": 37,
}

# TFDS datasets whose default evaluation split is not called "test".
TFDS_EVAL_SPLIT = {"imagenet2012": "validation"}

# Per-pixel statistics in the literature for streamed datasets, where reading the whole
# training set to compute them is too slow (ImageNet: the values torchvision uses).
KNOWN_STATS = {
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Streamed sets without known statistics estimate them from this many training images.
STATS_SAMPLE = 512

# Above this many bytes a dataset with a fixed image size is streamed, not held.
MAX_IN_MEMORY_BYTES = 8 << 30

TASKS = ("classification", "segmentation")
SEGMENTATION_CLASSES = 3        # oxford_iiit_pet trimap: pet, background, border
FITS = ("auto", "pad", "resize")


# ----------------------------------------------------------------------------------
# What a source gives
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split: `x` uint8 (N, H, W, C) and `y` int32 (N,) labels or (N, H, W) masks.

  A streamed split has ``x = y = None`` and instead a random-access `source` (anything
  with ``len`` and ``source[i]``) whose records `decode` turns into ``(image HWC uint8,
  label)``; `image_size` is then the size batches are cut to by default.
  """
  x: Optional[np.ndarray]
  y: Optional[np.ndarray]
  source: Optional[Sequence[Any]] = None
  decode: Optional[Callable[[Any], tuple[np.ndarray, Any]]] = None
  image_size: Optional[tuple[int, int]] = None

  @property
  def streamed(self) -> bool:
    return self.x is None

  def __len__(self) -> int:
    return len(self.source) if self.streamed else len(self.y)

  def example(self, i: int) -> tuple[np.ndarray, Any]:
    """(image, target) of example `i`, decoded if streamed."""
    if self.streamed:
      return self.decode(self.source[int(i)])
    return self.x[i], self.y[i]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Train and evaluation splits plus what a model and the pipeline need to know.

  `eval` is the carved-out validation split when `validation_size` > 0, else `test`.
  `mean` / `std` are per-channel float32 statistics of the training pixels / 255.
  """
  name: str
  train: Split
  eval: Split
  test: Split
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  task: str = "classification"
  validation: Optional[Split] = None


# ----------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------

def load(source: str, *, data_dir: Optional[str] = None,
         validation_size: int | float = 0, seed: int = 0,
         train_size: Optional[int] = None,
         image_size: Optional[int | Sequence[int]] = None,
         channels: Optional[int] = None, num_classes: Optional[int] = None,
         task: str = "classification", fit: str = "auto",
         stream: Optional[bool] = None) -> Dataset:
  """Reads `source` (see the module docstring) into a `Dataset`.

  Args:
    source: digits | mnist | cifar10 | npz:<glob>[|<glob>] | folder:<dir>[|<dir>] |
      tfds:<name>[:<splits>].
    data_dir: where the data lives (npz root, or the TFDS data_dir).
    validation_size: examples (int) or fraction (float in (0, 1)) of train held out
      as the evaluation split, chosen by `seed`.
    seed: picks the validation examples.
    train_size: keep only the first this many training examples (in the stored
      order, after the validation carve-out): a subset, e.g. for a CPU-sized study.
    image_size: (H, W) or one int for square images; default: as stored (32 for digits).
    channels: 1 or 3: grey images are repeated, colour ones turned into luma.
    num_classes: the label count; default the dataset's, or max label + 1.
    task: "classification", or "segmentation" (targets are per-pixel masks).
    fit: how images meet `image_size`: "pad" centres them on a zero canvas (cropping
      the centre where larger), "resize" rescales them; "auto" pads images that fit
      inside the target and resizes the others.
    stream: keep the split on disk and decode per batch (TFDS and folder sources);
      default: only datasets whose images have no fixed size or would take more than
      MAX_IN_MEMORY_BYTES decoded.
  """
  if task not in TASKS:
    raise unknown_choice("data task", task, TASKS)
  if fit not in FITS:
    raise unknown_choice("data fit", fit, FITS)
  size = _as_size(image_size)
  if channels not in (None, 1, 3):
    raise ConfigError(f"data.channels must be 1 or 3, got {channels!r}.")
  if not isinstance(source, str) or not source:
    raise ConfigError(f"data.source must be a non-empty string, got {source!r}.")

  kind, _, rest = source.partition(":")
  if task == "segmentation" and kind != "tfds":
    raise ConfigError(
        f"task='segmentation' needs masks, which only TFDS sources provide "
        f"(e.g. 'tfds:oxford_iiit_pet'), not {source!r}.")
  if source == "digits":
    train, test = _load_digits(size or (32, 32), fit)
    name, known = "digits", KNOWN_NUM_CLASSES["digits"]
  elif source in NPZ_SHORTCUTS:
    root = _data_root(data_dir)
    folder = root / source
    if not folder.is_dir():
      raise ConfigError(
          f"No {source} data at {folder}; put its train-*.npz / test-*.npz shards there, "
          f"or point data.data_dir or $CNN_DATA_DIR at the folder that holds {source}/.")
    train = _read_npz(str(folder / "train-*.npz"), None)
    test = _read_npz(str(folder / "test-*.npz"), None)
    name, known = source, NPZ_SHORTCUTS[source]
  elif kind == "npz" and rest:
    train_glob, _, test_glob = rest.partition("|")
    if not test_glob and not validation_size:
      raise ConfigError(
          f"Source {source!r} has no test shards; add '|<test glob>' after the train "
          f"glob or set data.validation_size to evaluate on part of train.")
    train = _read_npz(train_glob, data_dir)
    test = _read_npz(test_glob, data_dir) if test_glob else None
    name, known = source, None
  elif kind == "folder" and rest:
    train_dir, _, test_dir = rest.partition("|")
    if not test_dir and not validation_size:
      raise ConfigError(
          f"Source {source!r} has no test folder; add '|<test dir>' after the train "
          f"folder or set data.validation_size to evaluate on part of train.")
    roots = [folder_lib.resolve(d, data_dir) for d in (train_dir, test_dir) if d]
    if stream is None:
      stream = _folder_too_big(roots, size, channels)
    if stream:
      return _stream_folders(source, roots, validation_size=validation_size, seed=seed,
                             train_size=train_size, size=size, channels=channels,
                             num_classes=num_classes)
    x, y, names = folder_lib.read_folder(roots[0], size=size)
    train = Split(x, y)
    test = None
    if test_dir:
      tx, ty, _ = folder_lib.read_folder(roots[1], names, size=size)
      test = Split(tx, ty)
    name, known = source, len(names)
  elif kind == "tfds" and rest:
    return _load_tfds(rest, data_dir=data_dir, validation_size=validation_size, seed=seed,
                      train_size=train_size, size=size, channels=channels,
                      num_classes=num_classes, task=task,
                      fit=fit, stream=stream)
  else:
    raise ConfigError(
        f"Unknown data source {source!r}; use digits, mnist, cifar10, "
        f"npz:<train glob>[|<test glob>], folder:<train dir>[|<test dir>] or "
        f"tfds:<name>[:<train split>[|<eval split>]].")

  if size is not None or channels is not None:
    train = _reshape_split(train, size, channels, fit)
    test = None if test is None else _reshape_split(test, size, channels, fit)
  return _assemble(name, train, test, validation_size=validation_size, seed=seed,
                   train_size=train_size, num_classes=num_classes, known=known, task=task)


def _assemble(name: str, train: Split, test: Optional[Split], *,
              validation_size: int | float, seed: int, num_classes: Optional[int],
              known: Optional[int], task: str, stats=None,
              train_size: Optional[int] = None) -> Dataset:
  """Checks labels, carves out validation, keeps `train_size` training examples and
  computes the training statistics (of the examples kept)."""
  if num_classes is None:
    num_classes = known
  if num_classes is None:
    num_classes = int(max(_max_label(train), _max_label(test))) + 1
  for what, split in (("train", train), ("test", test)):
    _check_labels(name, what, split, num_classes)
  validation = None
  if validation_size:
    train, validation = carve_validation(train, validation_size, seed)
  if train_size is not None:
    train = first_examples(train, train_size)
  if test is None:
    test = validation
  mean, std = stats if stats is not None else channel_stats(train)
  return Dataset(name=name, train=train,
                 eval=validation if validation is not None else test, test=test,
                 num_classes=int(num_classes), mean=np.asarray(mean, np.float32),
                 std=np.asarray(std, np.float32), task=task, validation=validation)


# ----------------------------------------------------------------------------------
# Validation carve-out and statistics
# ----------------------------------------------------------------------------------

def carve_validation(train: Split, size: int | float, seed: int) -> tuple[Split, Split]:
  """(rest of train, validation): `size` examples (or that fraction) chosen by `seed`.

  Both parts keep the original order of the examples they hold.
  """
  n = len(train)
  if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
    raise ConfigError(f"data.validation_size must be a count or a fraction, got {size!r}.")
  if isinstance(size, (float, np.floating)):
    if not 0 < size < 1:
      raise ConfigError(
          f"data.validation_size={size} as a fraction must lie in (0, 1); use an int for "
          f"a count of examples.")
    count = int(round(size * n))
  else:
    count = int(size)
  if not 0 < count < n:
    raise ConfigError(
        f"data.validation_size={size} leaves no training or no validation examples out "
        f"of {n}; use a count between 1 and {n - 1}.")
  held = np.sort(np.random.default_rng(seed).permutation(n)[:count])
  keep = np.setdiff1d(np.arange(n), held)
  return _take(train, keep), _take(train, held)


def first_examples(train: Split, count: int) -> Split:
  """The first `count` examples of `train`; the whole split may not be asked for more."""
  n = len(train)
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 < count <= n:
    raise ConfigError(f"data.train_size={count!r} must be a count between 1 and the {n} "
                      "training examples left after the validation split.")
  return _take(train, np.arange(count))


def _take(split: Split, index: np.ndarray) -> Split:
  if split.streamed:
    return dataclasses.replace(split, source=_Subset(split.source, index))
  return dataclasses.replace(split, x=split.x[index], y=split.y[index])


class _Subset:
  """A random-access view of `source` at `index` (a streamed split's carve-out)."""

  def __init__(self, source: Sequence[Any], index: np.ndarray):
    self.source, self.index = source, index

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> Any:
    return self.source[int(self.index[i])]


def channel_stats(split: Split, *, sample: int = STATS_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of the pixels / 255.

  In-memory splits are summed exactly (float64 sums of integer pixel values, in
  chunks, so no full-size float copy is made); streamed splits use `sample` images
  spread evenly over the split.
  """
  if split.streamed:
    step = max(1, len(split) // sample)
    pixels = [split.example(i)[0] for i in range(0, len(split), step)[:sample]]
    flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in pixels]) / 255.0
    return flat.mean(0).astype(np.float32), flat.std(0).astype(np.float32)
  flat = split.x.reshape(-1, split.x.shape[-1])
  total, squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
  chunk = 1 << 16                          # pixels; larger chunks fall out of the cache
  for start in range(0, len(flat), chunk):
    # Channel-major rows sum fast; numpy's axis-0 sum over a (M, 1) or (M, 3) block,
    # or a matmul with ones on (M, 1), ran 10-40x slower here.
    part = np.ascontiguousarray(flat[start:start + chunk].T).astype(np.float64)
    total += part.sum(1)
    squares += (part * part).sum(1)
  mean = total / len(flat)
  var = np.maximum(squares / len(flat) - mean ** 2, 0.0)
  return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


def _max_label(split: Optional[Split]) -> int:
  if split is None or split.streamed or split.y.size == 0:
    return -1
  return int(split.y.max())


def _check_labels(name: str, what: str, split: Optional[Split], num_classes: int) -> None:
  if split is None or split.streamed or split.y.size == 0:
    return
  lo, hi = int(split.y.min()), int(split.y.max())
  if (lo < 0 or hi >= num_classes) and split.y.ndim > 1:
    raise ConfigError(
        f"{name}: {what} mask classes span [{lo}, {hi}] but must lie in [0, "
        f"{num_classes}); the masks must be trimaps with values 1, 2 and 3.")
  if lo < 0 or hi >= num_classes:
    raise ConfigError(
        f"{name}: {what} labels span [{lo}, {hi}] but must lie in [0, {num_classes}); "
        f"fix the labels or set data.num_classes={hi + 1}.")


# ----------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------

def _load_digits(size: tuple[int, int], fit: str) -> tuple[Split, Split]:
  """scikit-learn's digits as 0..255 uint8, a 24x24 digit centred in `size` (default 32)."""
  x, y = _digits_24()
  x = fit_images(x, size, fit)
  test = _stratified_holdout(y, 0.2, seed=0)
  train = np.setdiff1d(np.arange(len(y)), test)
  return Split(x[train], y[train]), Split(x[test], y[test])


@functools.lru_cache(maxsize=1)
def _digits_24() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as read-only uint8 24x24 images and int32 labels."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  d = load_digits()
  images = d.images.astype(np.float64) * (255.0 / 16.0)         # 0..16 -> 0..255
  images = resize_bilinear(images[..., None], (24, 24))          # 3x: the digit's box
  x = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  y = d.target.astype(np.int32)
  x.flags.writeable = y.flags.writeable = False
  return x, y


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of round(`fraction` * count) examples of each class."""
  rng = np.random.default_rng(seed)
  held = []
  for label in np.unique(y):
    members = np.flatnonzero(y == label)
    held.append(rng.permutation(members)[:int(round(fraction * len(members)))])
  return np.sort(np.concatenate(held))


# ----------------------------------------------------------------------------------
# npz shards
# ----------------------------------------------------------------------------------

def _data_root(data_dir: Optional[str]) -> pathlib.Path:
  root = data_dir or os.environ.get("CNN_DATA_DIR") or DEFAULT_DATA_ROOT
  return pathlib.Path(root).expanduser()


data_root = _data_root   # public: the canvas tasks read MNIST from the same root


def _read_npz(pattern: str, data_dir: Optional[str]) -> Split:
  """Concatenates the shards matching `pattern` in sorted file-name order."""
  pattern = os.path.expanduser(pattern)
  if data_dir and not os.path.isabs(pattern):
    pattern = os.path.join(os.path.expanduser(data_dir), pattern)
  files = sorted(glob.glob(pattern))
  if not files:
    raise ConfigError(
        f"No files match {pattern!r}; check the path (relative globs are read under "
        f"data.data_dir, else the working directory).")
  xs, ys = [], []
  for f in files:
    x, y = _read_shard(f)
    if x.ndim == 3:
      x = x[..., None]       # (N, H, W) grey images
    if x.ndim != 4 or x.dtype != np.uint8:
      raise ConfigError(
          f"Shard {f} has x of shape {x.shape} and dtype {x.dtype}; write x as uint8 "
          f"images of shape (N, H, W, C).")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
      raise ConfigError(
          f"Shard {f} has y of shape {y.shape} and dtype {y.dtype} for {len(x)} images; "
          f"write one integer label per image.")
    if xs and x.shape[1:] != xs[0].shape[1:]:
      raise ConfigError(
          f"Shard {f} holds images of shape {x.shape[1:]} but {files[0]} holds "
          f"{xs[0].shape[1:]}; every shard of a split must have the same image shape.")
    xs.append(x)
    ys.append(y)
  return Split(np.concatenate(xs), np.concatenate(ys).astype(np.int32))


def _read_shard(f: str) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of one npz shard. A file that is not an npz archive, is cut short, or holds
  object arrays (which would need pickle, i.e. running code from the file) is a
  one-sentence ConfigError naming it, not a traceback from numpy or zipfile."""
  try:
    shard = np.load(f, allow_pickle=False)
    if not isinstance(shard, np.lib.npyio.NpzFile):
      raise ConfigError(f"Shard {f} is a single .npy array, not an npz archive; write it "
                        "with numpy.savez(path, x=uint8 images, y=integer labels).")
    with shard:
      if "x" not in shard or "y" not in shard:
        raise ConfigError(
            f"Shard {f} holds {sorted(shard.files)}; each npz shard must hold arrays "
            f"'x' (uint8 images) and 'y' (integer labels).")
      return shard["x"], shard["y"]
  except ConfigError:
    raise
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as e:
    raise ConfigError(f"Shard {f} cannot be read ({_npz_problem(f, e)}); rewrite it "
                      "with numpy.savez(path, x=uint8 images, y=integer labels).") from None


def _npz_problem(f: str, error: Exception) -> str:
  """Why numpy could not read `f`, in a few words."""
  try:
    with open(f, "rb") as stream:
      head = stream.read(4)
  except OSError as e:
    return f"it is not a readable file: {e.strerror}"
  if head != b"PK\x03\x04":
    return "it is not an npz (zip) archive"
  if not zipfile.is_zipfile(f):
    return "the archive is cut short"
  if "allow_pickle" in str(error):
    return "it holds object arrays, which would need pickle"
  text = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
  return f"the archive is damaged: {text}"


# ----------------------------------------------------------------------------------
# Image folders, streamed
# ----------------------------------------------------------------------------------

def _folder_too_big(roots: Sequence[pathlib.Path], size, channels) -> bool:
  """Whether the folders' images (train and test: both would be held) decoded would
  exceed MAX_IN_MEMORY_BYTES; estimated from headers, nothing decoded."""
  paths = [path for root in roots for path in folder_lib.list_images(root)[0]]
  return folder_lib.decoded_bytes(paths, size, channels) > MAX_IN_MEMORY_BYTES


def _stream_folders(name: str, roots: Sequence[pathlib.Path], *, validation_size, seed,
                    train_size, size, channels, num_classes) -> Dataset:
  """Train (and test) folders as streamed splits (`folder.stream_folder`): images are
  decoded per batch on the host, statistics estimated from a sample of the held-in
  training images, as for streamed TFDS sets without KNOWN_STATS."""
  splits, names = [], None
  for root in roots:
    files, decode, image_size, found = folder_lib.stream_folder(root, names, size)
    names = names or found
    splits.append(Split(None, None, source=files, decode=_with_channels(decode, channels),
                        image_size=image_size))
  train, test = splits[0], (splits[1] if len(splits) > 1 else None)
  for what, split in (("train", train), ("test", test)):
    if split is not None:   # the labels are in memory: checked as in-memory ones are
      _check_labels(name, what, Split(np.empty(0), split.source.labels),
                    num_classes or len(names))
  held_in = carve_validation(train, validation_size, seed)[0] if validation_size else train
  if train_size is not None:
    held_in = first_examples(held_in, train_size)
  return _assemble(name, train, test, validation_size=validation_size, seed=seed,
                   train_size=train_size, num_classes=num_classes, known=len(names),
                   task="classification", stats=channel_stats(held_in))


def _with_channels(decode: Callable, channels: Optional[int]) -> Callable:
  """`decode` whose images get `channels` the way in-memory splits do (`_set_channels`)."""
  if channels is None:
    return decode

  def decode_channels(record) -> tuple[np.ndarray, Any]:
    image, label = decode(record)
    return _set_channels(image[None], channels)[0], label
  return decode_channels


# ----------------------------------------------------------------------------------
# tensorflow-datasets
# ----------------------------------------------------------------------------------

def _load_tfds(spec: str, *, data_dir, validation_size, seed, size, channels, num_classes,
               task, fit, stream, train_size=None) -> Dataset:
  """`spec` is ``<name>[:<train split>[|<eval split>]]``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  name, _, splits = spec.partition(":")
  train_spec, _, eval_spec = splits.partition("|")
  train_spec = train_spec or "train"
  eval_spec = eval_spec or TFDS_EVAL_SPLIT.get(name, "test")
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  builder = _tfds_builder(tfds, name, data_dir)
  features = builder.info.features
  target_key = "segmentation_mask" if task == "segmentation" else "label"
  if "image" not in features or target_key not in features:
    raise ConfigError(
        f"TFDS dataset {name!r} has features {sorted(features.keys())}, not 'image' and "
        f"{target_key!r}; choose an image {task} dataset.")
  stored = tuple(features["image"].shape)
  fixed = None not in stored
  sources = [_tfds_source(tfds, builder, name, s) for s in (train_spec, eval_spec)]
  full_name = f"tfds:{name}"

  if task == "segmentation":
    if size is None:
      raise ConfigError(
          f"Segmentation images of {name!r} differ in size; set data.image_size, e.g. 128.")
    if stream:
      raise ConfigError(
          f"Streaming segmentation masks is not supported; leave data.stream unset so "
          f"{name!r} is read into memory at data.image_size.")
    train, test = (_materialize(s, _segmentation_decoder(size, channels)) for s in sources)
    return _assemble(full_name, train, test, validation_size=validation_size, seed=seed,
                     train_size=train_size, num_classes=SEGMENTATION_CLASSES, known=None,
                     task=task)

  num_classes = num_classes or features["label"].num_classes
  if stream is None:
    image = (*(size or stored[:2]), channels or stored[-1])
    stream = (not fixed and size is None) or (
        len(sources[0]) * int(np.prod(image)) > MAX_IN_MEMORY_BYTES)
  if stream:
    # Decoded at full size; the pipeline crops or resizes each batch to `out`.
    decode = _classification_decoder(None, channels, fit)
    out = size or (stored[:2] if fixed else None)
    train, test = (Split(None, None, source=s, decode=decode, image_size=out)
                   for s in sources)
    stats = KNOWN_STATS.get(name)
    if stats is None:
      held_in = carve_validation(train, validation_size, seed)[0] if validation_size else train
      stats = channel_stats(held_in)
    return _assemble(full_name, train, test, validation_size=validation_size, seed=seed,
                     train_size=train_size, num_classes=num_classes, known=None, task=task,
                     stats=stats)
  if not fixed and size is None:
    raise ConfigError(
        f"Images of {name!r} differ in size; set data.image_size to hold them in memory.")
  train, test = (_materialize(s, _classification_decoder(size, channels, fit))
                 for s in sources)
  return _assemble(full_name, train, test, validation_size=validation_size, seed=seed,
                   train_size=train_size, num_classes=num_classes, known=None, task=task)


def _tfds_builder(tfds, name: str, data_dir: Optional[str]):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = _close(name, tfds.list_builders(with_community_datasets=False))
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ConfigError(
        f"Unknown TFDS dataset {name!r}{hint}; use a name from the TFDS catalogue, "
        f"e.g. tfds:mnist, tfds:cifar10 or tfds:imagenet2012.") from None


def _close(name: str, names: Sequence[str]) -> list[str]:
  import difflib  # pylint: disable=import-outside-toplevel
  return difflib.get_close_matches(name, names, n=3)


def _tfds_source(tfds, builder, name: str, split: str):
  """`tfds.data_source` without any download: unprepared data fails in well under 1 s."""
  try:
    return tfds.data_source(name, split=split, data_dir=builder.data_dir_root,
                            download=False)
  except (NotImplementedError, AssertionError, FileNotFoundError, ValueError,
          KeyError) as e:
    where = builder.data_dir
    if builder.is_prepared():
      if "split" in str(e).lower():
        raise ConfigError(
            f"TFDS dataset {name!r} has no split {split!r}; name existing splits, e.g. "
            f"tfds:{name}:train|test.") from None
      raise ConfigError(
          f"TFDS dataset {name!r} at {where} is not in array_record format, which the "
          f"NumPy-only reader needs; rebuild it with `tfds build {name} "
          f"--file_format=array_record`.") from None
    manual = ""
    if name == "imagenet2012":
      manual = (f"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
                f"{builder.data_dir_root}/downloads/manual (or pass --manual_dir) and ")
    raise ConfigError(
        f"TFDS dataset {name!r} is not prepared at {where}; {manual}prepare it once "
        f"with `tfds build {name} --data_dir {builder.data_dir_root} "
        f"--file_format=array_record` (needs TensorFlow and, except for manual "
        f"datasets, a network), or point data.data_dir or $TFDS_DATA_DIR at a folder "
        f"that holds it.") from None


def _classification_decoder(size, channels, fit) -> Callable:
  def decode(record) -> tuple[np.ndarray, int]:
    image = np.asarray(record["image"])
    if image.ndim == 2:
      image = image[..., None]
    image = _set_channels(image[None], channels)[0]
    if size is not None:
      image = fit_images(image[None], size, fit)[0]
    return image, int(record["label"])
  return decode


def _segmentation_decoder(size, channels) -> Callable:
  """Image resized bilinearly, trimap (1, 2, 3) by nearest neighbours to classes 0..2."""
  def decode(record) -> tuple[np.ndarray, np.ndarray]:
    image = _set_channels(np.asarray(record["image"])[None], channels)
    image = np.clip(np.rint(resize_bilinear(image.astype(np.float64), size)), 0, 255)
    mask = resize_nearest(np.asarray(record["segmentation_mask"])[None], size)
    return image[0].astype(np.uint8), mask[0, ..., 0].astype(np.int32) - 1
  return decode


def _materialize(source: Sequence[Any], decode: Callable) -> Split:
  """Reads and decodes every record of `source` into arrays."""
  if len(source) == 0:
    raise ConfigError("The TFDS split is empty; check the split specification.")
  images, targets = zip(*(decode(source[i]) for i in range(len(source))))
  return Split(np.stack(images), np.asarray(np.stack(targets), np.int32))


# ----------------------------------------------------------------------------------
# Shapes: size and channels
# ----------------------------------------------------------------------------------

def _as_size(image_size) -> Optional[tuple[int, int]]:
  if image_size is None:
    return None
  size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
  if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
    raise ConfigError(
        f"data.image_size must be a positive int or (height, width), got {image_size!r}.")
  return int(size[0]), int(size[1])


def _reshape_split(split: Split, size, channels, fit) -> Split:
  x = _set_channels(split.x, channels)
  if size is not None:
    x = fit_images(x, size, fit)
  return dataclasses.replace(split, x=x)


def _set_channels(x: np.ndarray, channels: Optional[int]) -> np.ndarray:
  """Grey -> colour by repeating; colour -> grey by ITU-R 601 luma."""
  have = x.shape[-1]
  if channels is None or channels == have:
    return x
  if have == 1 and channels == 3:
    return np.repeat(x, 3, axis=-1)
  if have == 3 and channels == 1:
    luma = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
  raise ConfigError(f"Cannot turn {have}-channel images into {channels} channels; "
                    f"use data.channels 1 or 3.")


def fit_images(x: np.ndarray, size: tuple[int, int], fit: str = "auto") -> np.ndarray:
  """uint8 (N, H, W, C) to (N, *size, C): pad/centre-crop or bilinear resize (see load)."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  if fit == "pad" or (fit == "auto" and h <= size[0] and w <= size[1]):
    return pad_or_crop(x, size)
  return np.clip(np.rint(resize_bilinear(x.astype(np.float32), size)), 0, 255).astype(np.uint8)


def pad_or_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Centres each image on a zero canvas of `size`, cropping the centre where larger."""
  out = np.zeros((x.shape[0], *size, x.shape[-1]), x.dtype)
  src, dst = [], []
  for have, want in zip(x.shape[1:3], size):
    lo_src, lo_dst = max(0, (have - want) // 2), max(0, (want - have) // 2)
    n = min(have, want)
    src.append(slice(lo_src, lo_src + n))
    dst.append(slice(lo_dst, lo_dst + n))
  out[:, dst[0], dst[1]] = x[:, src[0], src[1]]
  return out


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of half-pixel-centred linear interpolation, with a triangle
  filter widened by the scale when shrinking (antialiasing, as PIL and jax.image do)."""
  scale = n_out / n_in
  support = max(1.0, 1.0 / scale)
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  taps = np.arange(n_in)
  weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
  return weights / weights.sum(1, keepdims=True)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Float (N, H, W, C) resized to (N, *size, C) by separable linear interpolation."""
  rows = interpolation_matrix(x.shape[1], size[0])
  cols = interpolation_matrix(x.shape[2], size[1])
  return np.einsum("ih,nhwc,jw->nijc", rows, x, cols, optimize=True)


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, H, W, C) resized by picking the source pixel under each output pixel's centre."""
  rows = np.minimum(((np.arange(size[0]) + 0.5) * x.shape[1] / size[0]).astype(int),
                    x.shape[1] - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * x.shape[2] / size[1]).astype(int),
                    x.shape[2] - 1)
  return x[:, rows][:, :, cols]
