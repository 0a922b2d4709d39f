"""Feeding the model: batches chosen, gathered, augmented and normalised on the devices.

The uint8 training images are placed on the devices once (`put_on_devices`); the
function from `make_train_batch_fn` then builds each batch inside the jitted train
step, so no step waits on the host (the airbench way).

The batch at global step ``s`` is a pure function of ``(seed, s)``: epoch ``s //
steps_per_epoch`` visits the examples in a permutation keyed by ``fold_in(key,
epoch)``, the last ``num_examples % batch_size`` positions of each permutation are
dropped, and augmentation draws from ``fold_in(key, s)``. A run resumed at step ``s``
therefore sees exactly the batches it would have seen.

Shuffling a 50,000-example permutation inside every step would cost more than a
LeNet-5 step on a CPU (a sort: ~13-29 ms measured at N = 60,000), so the permutation
is never materialised: `permute` maps positions to examples with a swap-or-not
shuffle (Hoang, Morris & Rogaway 2012), a keyed bijection of [0, N) evaluated only at
the batch's positions (~0.1 ms).

Streamed datasets (ImageNet) use the same schedule on the host: `StreamingBatches`
decodes and augments with numpy in a background thread.
"""
from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn import sharding
from cnn.data import augment as augment_lib
from cnn.data.sources import Split
from cnn.errors import ConfigError

Array = jax.Array

# Independent streams of one seed: which examples, and how they are augmented.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1
# Swap-or-not rounds per bit of N (HMR 2012 analyse ~6 lg N for a pseudorandom
# permutation), and at least this many.
_ROUNDS_PER_BIT, _MIN_ROUNDS = 6, 24


# ----------------------------------------------------------------------------------
# The schedule: which examples form the batch at step s
# ----------------------------------------------------------------------------------

def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full training batches per epoch (the remainder is dropped)."""
  _check_batch(num_examples, batch_size)
  return num_examples // batch_size


def eval_steps(num_examples: int, batch_size: int) -> int:
  """Evaluation batches covering `num_examples` once, the last one padded."""
  _check_batch(max(num_examples, batch_size), batch_size)
  return -(-num_examples // batch_size)


def _check_batch(num_examples: int, batch_size: int) -> None:
  if batch_size <= 0:
    raise ConfigError(f"train.batch_size must be positive, got {batch_size}.")
  if batch_size > num_examples:
    raise ConfigError(
        f"train.batch_size={batch_size} is larger than the {num_examples} training "
        f"examples; use a batch size of at most {num_examples}.")


def _hash32(x: Array) -> Array:
  """MurmurHash3's finaliser: every input bit flips each output bit with prob ~1/2."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def permute(key: Array, positions: Array, n: int) -> Array:
  """The examples at `positions` of a random permutation of [0, n) keyed by `key`.

  Swap-or-not: each round pairs x with K - x (mod n), an involution, and swaps the
  pair when a keyed hash of the pair's larger member says so; any composition of
  such rounds is a bijection of [0, n). Round constants are hashed from the key's
  words rather than drawn with jax.random, whose every call site adds ~1 s of
  compilation on XLA:CPU.
  """
  rounds = max(_MIN_ROUNDS, _ROUNDS_PER_BIT * math.ceil(math.log2(max(n, 2))))
  seed = jnp.uint32(0x9E3779B9)
  for word in jax.random.key_data(key).ravel():
    seed = _hash32(seed ^ word.astype(jnp.uint32))

  def round_(i, x):
    constant = _hash32(seed + jnp.uint32(0x9E3779B9) * i.astype(jnp.uint32))
    partner = (constant % jnp.uint32(n)).astype(jnp.int32) - x
    partner = jnp.where(partner < 0, partner + n, partner)
    larger = jnp.maximum(x, partner).astype(jnp.uint32)
    swap = (_hash32(larger ^ _hash32(constant ^ seed)) >> 31) == 1
    return jnp.where(swap, partner, x)

  # A loop, not unrolled: compiles in ~1 s instead of ~6 s and runs faster on CPU.
  return lax.fori_loop(0, rounds, round_, positions.astype(jnp.int32))


def _key(seed: int | Array) -> Array:
  if isinstance(seed, (int, np.integer)):
    return jax.random.key(int(seed))
  return seed


def batch_indices(seed: int | Array, step: int | Array, num_examples: int,
                  batch_size: int) -> Array:
  """int32 (batch_size,) example indices of the training batch at global `step`."""
  spe = steps_per_epoch(num_examples, batch_size)
  step = jnp.asarray(step, jnp.int32)
  key = jax.random.fold_in(_key(seed), _SHUFFLE_STREAM)
  positions = (step % spe) * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  return permute(jax.random.fold_in(key, step // spe), positions, num_examples)


def augment_key(seed: int | Array, step: int | Array) -> Array:
  """The key the augmentation of the batch at `step` draws from."""
  key = jax.random.fold_in(_key(seed), _AUGMENT_STREAM)
  return jax.random.fold_in(key, jnp.asarray(step, jnp.int32))


# ----------------------------------------------------------------------------------
# On the devices
# ----------------------------------------------------------------------------------

def normalize(images: Array, mean, std) -> Array:
  """uint8 pixels to float32 ``(x / 255 - mean) / std`` per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def _check_stats(channels: int, mean, std) -> None:
  for what, v in (("mean", mean), ("std", std)):
    if np.shape(v) not in ((), (channels,)):
      raise ConfigError(
          f"The {what} has shape {np.shape(v)} but the images have {channels} channels; "
          f"pass the dataset's per-channel {what} (Dataset.{what}).")


def is_mask(targets, images) -> bool:
  """Whether `targets` are per-pixel masks of `images` (so a crop must move them too)
  rather than per-example labels, such as (N, boxes, 5) detection rows."""
  return targets.ndim == 3 and tuple(targets.shape[1:3]) == tuple(images.shape[1:3])


def make_train_batch_fn(num_examples: int, batch_size: int, *, augment: str, mean, std,
                        seed: int, out_size: Optional[Sequence[int]] = None,
                        sharding: Optional[jax.sharding.Sharding] = None):
  """``fn(images_u8, labels, step) -> (images_f32, labels_i32)``: pure and jittable.

  `images_u8` / `labels` are the whole training split (on the devices); `step` may be
  a traced int32 scalar. The images come out normalised with `mean` / `std`, augmented
  by `augment` (a name of `augment.get`, e.g. "crop+flip+rotate30"), at `out_size`
  (default: as stored). Labels of rank 3 (segmentation masks) move with their images.
  `sharding`, if given, constrains both outputs (e.g. batch-sharded over the mesh's
  data axis).
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  # The statistics let noise, lighting and vignetting act on pixels, not z-scores.
  aug = augment_lib.get(augment, mean=mean, std=std)
  steps_per_epoch(num_examples, batch_size)
  key = jax.random.key(seed)

  def train_batch(images_u8: Array, labels: Array, step: Array) -> tuple[Array, Array]:
    if images_u8.shape[0] != num_examples or labels.shape[0] != num_examples:
      raise ConfigError(
          f"The batch function was made for {num_examples} examples but got "
          f"{images_u8.shape[0]} images and {labels.shape[0]} labels; make it with "
          f"len(dataset.train).")
    _check_stats(images_u8.shape[-1], mean, std)
    index = batch_indices(key, step, num_examples, batch_size)
    images = normalize(jnp.take(images_u8, index, axis=0), mean, std)
    targets = jnp.take(labels, index, axis=0).astype(jnp.int32)
    size = tuple(out_size) if out_size is not None else images.shape[1:3]
    masks = targets if is_mask(targets, images) else None
    images, masks = aug(augment_key(key, step), images, masks, size)
    if masks is not None:
      targets = masks
    if sharding is not None:
      images = lax.with_sharding_constraint(images, sharding)
      targets = lax.with_sharding_constraint(targets, sharding)
    return images, targets

  return train_batch


def make_eval_batch_fn(num_examples: int, batch_size: int, *, mean, std,
                       out_size: Optional[Sequence[int]] = None):
  """``fn(images_u8, labels, i) -> (images, labels, mask)``: evaluation batch `i` of
  `eval_steps(num_examples, batch_size)` on the devices; the tail is padded with the
  last example and masked (mask 0.0)."""
  eval_steps(num_examples, batch_size)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def eval_batch(images_u8: Array, labels: Array, i: Array):
    position = jnp.asarray(i, jnp.int32) * batch_size + jnp.arange(batch_size)
    mask = (position < num_examples).astype(jnp.float32)
    index = jnp.minimum(position, num_examples - 1)
    images = normalize(jnp.take(images_u8, index, axis=0), mean, std)
    size = tuple(out_size) if out_size is not None else images.shape[1:3]
    targets = jnp.take(labels, index, axis=0).astype(jnp.int32)
    if is_mask(targets, images):
      targets = augment_lib.center_crop(targets, size)
    return augment_lib.center_crop(images, size), targets, mask

  return eval_batch


def put_on_devices(split: Split, mesh: Mesh) -> tuple[Array, Array]:
  """(images, targets) of an in-memory split, replicated over `mesh` (every process
  passes the same arrays)."""
  if split.streamed:
    raise ConfigError(
        "A streamed split cannot be placed on the devices; feed it with "
        "cnn.data.StreamingBatches instead.")
  replicated = NamedSharding(mesh, P())
  return tuple(jax.make_array_from_callback(a.shape, replicated, lambda i, a=a: a[i])
               for a in (split.x, np.asarray(split.y, np.int32)))


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
  """The rows of a global batch of `batch_size` split by `sharding` that this
  process's devices hold: what this process builds and feeds (all rows for a single
  process). Processes own contiguous blocks on meshes made by `cnn.sharding`."""
  spans = sorted({(index[0].start or 0, batch_size if index[0].stop is None
                   else index[0].stop)
                  for index in sharding.addressable_devices_indices_map(
                      (batch_size,)).values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ConfigError(
        "This process's devices hold non-contiguous rows of the batch; build the mesh "
        "with cnn.sharding.make_mesh (devices in process order).")
  return slice(start, stop)


def place_batch(arrays: Sequence[np.ndarray], sharding: jax.sharding.Sharding,
                batch_size: int) -> tuple[Array, ...]:
  """Global arrays of `batch_size` rows split by `sharding`, from this process's rows
  (`process_rows`) of each: every process feeds only its addressable shards."""
  return tuple(jax.make_array_from_process_local_data(
      sharding, np.asarray(a), (batch_size, *np.shape(a)[1:])) for a in arrays)


# ----------------------------------------------------------------------------------
# On the host
# ----------------------------------------------------------------------------------

def normalize_np(images: np.ndarray, mean, std) -> np.ndarray:
  """The numpy twin of `normalize`."""
  return ((images.astype(np.float32) / np.float32(255.0) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def _default_out_size(split: Split, out_size) -> tuple[int, int]:
  if out_size is not None:
    return tuple(int(s) for s in out_size)
  if split.image_size is not None:
    return tuple(split.image_size)
  if not split.streamed:
    return tuple(split.x.shape[1:3])
  raise ConfigError(
      "The streamed images differ in size; set data.image_size (e.g. 224) to the size "
      "the model takes.")


def eval_batches(split: Split, batch_size: int, *, mean, std,
                 out_size: Optional[Sequence[int]] = None, workers: int = 4,
                 rows: slice = slice(None)
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images float32, targets int32, mask float32) covering `split` exactly once.

  The last partial batch is padded with copies of the last example whose mask is 0.
  `rows` picks the rows of each batch to build (a process's share, `process_rows`).
  In-memory images are centre-cropped to `out_size`; streamed ones get the
  evaluation view (`augment.host_center_fit`).
  """
  n = len(split)
  if batch_size <= 0:
    raise ConfigError(f"The evaluation batch size must be positive, got {batch_size}.")
  size = _default_out_size(split, out_size)
  pool = concurrent.futures.ThreadPoolExecutor(workers) if split.streamed else None
  try:
    for start in range(0, n, batch_size):
      position = np.arange(start, start + batch_size)[rows]
      mask = (position < n).astype(np.float32)
      index = np.minimum(position, n - 1)
      if split.streamed:
        examples = list(pool.map(split.example, index))
        images = np.stack([augment_lib.host_center_fit(x, size) for x, _ in examples])
        targets = np.asarray([y for _, y in examples], np.int32)
      else:
        images = augment_lib.center_crop(split.x[index], size)
        targets = np.asarray(split.y[index], np.int32)
        if is_mask(targets, split.x):
          targets = augment_lib.center_crop(targets, size)
      yield normalize_np(images, mean, std), targets, mask
  finally:
    if pool is not None:
      pool.shutdown(wait=False)


class StreamingBatches:
  """Training batches of a split too big for the devices, built on the host.

  The batch at step s holds the same examples `make_train_batch_fn` would pick
  (`batch_indices`); each image is decoded and augmented by the `augment` entry of
  `augment.HOST_AUGMENTATIONS` with a numpy generator seeded from ``augment_key(seed,
  s)`` and its position in the batch. Iterating runs a background thread that keeps
  `prefetch` batches ready, already `jax.device_put` to the batch sharding of `mesh`.

      batches = StreamingBatches(ds.train, 256, "imagenet", mean=ds.mean, std=ds.std,
                                 seed=0, out_size=(224, 224), mesh=mesh)
      for step, (images, labels) in zip(range(start, steps), batches.iterate(start)):
        ...
  """

  def __init__(self, source: Split, batch_size: int, augment: str = "none", *, mean,
               std, seed: int = 0, out_size: Optional[Sequence[int]] = None,
               mesh: Optional[Mesh] = None, prefetch: int = 2, workers: int = 4):
    self.split = source
    self.batch_size = batch_size
    self.num_examples = len(source)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, batch_size)
    self.out_size = _default_out_size(source, out_size)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self._augment = augment_lib.get_host(augment)
    self._fill = np.clip(np.rint(self.mean * 255), 0, 255).astype(np.uint8)
    self._key = jax.random.key(seed)
    self._sharding = None
    self._rows = slice(None)
    if mesh is not None:
      sharding.check_batch_size(batch_size, mesh)
      self._sharding = NamedSharding(mesh, P("data" if "data" in mesh.axis_names else None))
      # Each process decodes only the rows its devices hold.
      self._rows = process_rows(self._sharding, batch_size)
    self._indices = jax.jit(lambda step: batch_indices(self._key, step, self.num_examples,
                                                       batch_size))
    self._seeds = jax.jit(lambda step: jax.random.key_data(augment_key(self._key, step)))
    self._prefetch = max(1, prefetch)
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))

  def indices(self, step: int) -> np.ndarray:
    """The example indices of the batch at `step`."""
    return np.asarray(self._indices(np.int32(step)))

  def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (B, h, w, C), labels int32) of the batch at `step`, on the host:
    with a mesh over several processes, only this process's rows of it."""
    seeds = [int(s) for s in np.asarray(self._seeds(np.int32(step))).ravel()]

    def one(item: tuple[int, int]) -> tuple[np.ndarray, Any]:
      position, index = item
      image, label = self.split.example(index)
      if np.ndim(label):
        raise ConfigError("Streamed batches carry class labels only; load segmentation "
                          "masks into memory and use make_train_batch_fn.")
      rng = np.random.default_rng([*seeds, position])
      return self._augment(np.asarray(image), rng, self.out_size, self._fill), label

    examples = list(self._pool.map(one, list(enumerate(self.indices(step)))[self._rows]))
    images = np.stack([x for x, _ in examples])
    labels = np.asarray([y for _, y in examples], np.int32)
    return normalize_np(images, self.mean, self.std), labels

  def iterate(self, start: int = 0, steps: Optional[int] = None) -> Iterator[tuple[Any, Any]]:
    """Batches of steps start, start + 1, ... (`steps` of them, or without end),
    prepared by a background thread and placed on the devices."""
    ready: queue.Queue = queue.Queue(self._prefetch)
    stop = threading.Event()
    end = None if steps is None else start + steps

    def produce():
      step = start
      try:
        while not stop.is_set() and (end is None or step < end):
          batch = self.batch_at(step)
          batch = (place_batch(batch, self._sharding, self.batch_size) if self._sharding
                   else jax.device_put(batch))
          while not stop.is_set():
            try:
              ready.put((step, batch), timeout=0.1)
              break
            except queue.Full:
              continue
          step += 1
      except BaseException as e:  # handed to the consumer, raised there
        ready.put((None, e))
        return
      ready.put((None, None))

    thread = threading.Thread(target=produce, daemon=True, name="StreamingBatches")
    thread.start()
    try:
      while True:
        step, item = ready.get()
        if step is None:
          if item is not None:
            raise item
          return
        yield item
    finally:
      stop.set()
      while thread.is_alive():
        try:
          ready.get_nowait()
        except queue.Empty:
          thread.join(0.05)

  def __iter__(self):
    return self.iterate(0)

  def close(self) -> None:
    self._pool.shutdown(wait=False)
