"""cnn.data: sources, the on-device batch schedule, augmentations, streaming."""
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn.data as data
from cnn.data import augment as augment_lib
from cnn.data import sources
from cnn.errors import ConfigError

# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------


def write_shards(folder: pathlib.Path, prefix: str, parts, shape=(6, 5, 1)):
  """Shards `prefix`-i.npz whose images are filled with their global index."""
  start = 0
  for i, (n, labels) in enumerate(parts):
    x = (np.arange(start, start + n, dtype=np.uint8)[:, None, None, None]
         * np.ones(shape, np.uint8))
    np.savez(folder / f"{prefix}-{i:05d}.npz", x=x, y=np.asarray(labels, np.uint8))
    start += n


def coordinate_images(n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Image k: channel 0 = row + 1, channel 1 = column + 1, channel 2 = k % 255 + 1.

  Every pixel says where it came from and whose it is, and no pixel is 0, so the
  zero fill of padding is told apart from the image.
  """
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  x = np.empty((n, size, size, 3), np.uint8)
  x[..., 0] = rows + 1
  x[..., 1] = cols + 1
  x[..., 2] = (np.arange(n) % 255 + 1)[:, None, None]
  return x, np.arange(n, dtype=np.int32)


def shifted(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
  """He et al.'s crop by hand: pad 4 with zeros, 32x32 window at (4 + dy, 4 + dx)."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  h, w = image.shape[:2]
  crop = padded[4 + dy:4 + dy + h, 4 + dx:4 + dx + w]
  return crop[:, ::-1] if flip else crop


# ----------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------


def test_digits_shapes_classes_and_determinism():
  ds = data.load("digits")
  again = data.load("digits")
  # load_digits holds 1,797 images; 20% of each class is the test split.
  assert len(ds.train) + len(ds.test) == 1797
  assert ds.train.x.shape[1:] == ds.test.x.shape[1:] == (32, 32, 1)
  assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int32
  assert ds.num_classes == 10
  assert set(np.unique(ds.test.y)) == set(range(10))
  # Per-class counts are 174..183 in load_digits: 20% rounds to 35..37 per class.
  assert np.all((np.bincount(ds.test.y) >= 35) & (np.bincount(ds.test.y) <= 37))
  np.testing.assert_array_equal(ds.train.x, again.train.x)
  np.testing.assert_array_equal(ds.test.y, again.test.y)
  # The 24x24 digit sits 4 zero pixels inside the 32x32 canvas.
  border = np.concatenate([ds.train.x[:, :4].ravel(), ds.train.x[:, -4:].ravel(),
                           ds.train.x[:, :, :4].ravel(), ds.train.x[:, :, -4:].ravel()])
  assert border.max() == 0 and ds.train.x.max() == 255
  # The statistics are those of the training pixels / 255.
  np.testing.assert_allclose(ds.mean, [ds.train.x.mean() / 255], rtol=1e-5)
  np.testing.assert_allclose(ds.std, [ds.train.x.std() / 255], rtol=1e-5)


def test_digits_image_size_and_channels():
  ds = data.load("digits", image_size=28, channels=3)
  assert ds.train.x.shape[1:] == (28, 28, 3)
  np.testing.assert_array_equal(ds.train.x[..., 0], ds.train.x[..., 2])


def test_validation_carve_out_is_deterministic_by_seed():
  full = data.load("digits")
  a = data.load("digits", validation_size=300, seed=1)
  b = data.load("digits", validation_size=300, seed=1)
  c = data.load("digits", validation_size=0.1, seed=2)
  assert len(a.eval) == 300 and len(a.train) == len(full.train) - 300
  assert a.eval is a.validation and a.test is not a.eval
  np.testing.assert_array_equal(a.eval.x, b.eval.x)
  assert len(c.eval) == round(0.1 * len(full.train))
  # Train and validation partition the original training split.
  key = lambda x: {bytes(i) for i in x.reshape(len(x), -1)}  # noqa: E731
  assert key(a.train.x) | key(a.eval.x) == key(full.train.x)
  assert not np.array_equal(a.eval.y[:50], c.eval.y[:50])
  # Statistics come from what is left for training.
  np.testing.assert_allclose(a.mean, [a.train.x.mean() / 255], rtol=1e-5)


def test_train_size_keeps_the_first_examples_after_the_carve_out(tmp_path):
  # Shard images hold their global index (write_shards), so the kept ones are legible.
  write_shards(tmp_path, "train", [(10, [i % 3 for i in range(10)])])
  write_shards(tmp_path, "test", [(2, [0, 1])])
  ds = data.load("npz:train-*.npz|test-*.npz", data_dir=str(tmp_path),
                 validation_size=3, seed=0, train_size=4)
  held = set(ds.eval.x[:, 0, 0, 0].tolist())
  rest = [i for i in range(10) if i not in held]
  np.testing.assert_array_equal(ds.train.x[:, 0, 0, 0], rest[:4])
  assert len(ds.eval) == 3 and len(ds.test) == 2
  # Statistics are those of the 4 images kept: their pixel values are their indices.
  np.testing.assert_allclose(ds.mean, [np.mean(rest[:4]) / 255], rtol=1e-5)
  with pytest.raises(ConfigError, match=r"data.train_size=8 .* 7 training examples"):
    data.load("npz:train-*.npz|test-*.npz", data_dir=str(tmp_path), validation_size=3,
              train_size=8)


def test_npz_shards_concatenate_in_sorted_order(tmp_path):
  write_shards(tmp_path, "train", [(4, [0, 1, 2, 3]), (3, [4, 0, 1])])
  write_shards(tmp_path, "test", [(2, [2, 3])])
  ds = data.load("npz:train-*.npz|test-*.npz", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.train.x[:, 0, 0, 0], np.arange(7))
  np.testing.assert_array_equal(ds.train.y, [0, 1, 2, 3, 4, 0, 1])
  assert ds.train.y.dtype == np.int32 and ds.num_classes == 5   # max label 4 + 1
  assert ds.test.x.shape == (2, 6, 5, 1)
  # Absolute globs, a fraction held out instead of a test glob, a padded canvas.
  held = data.load(f"npz:{tmp_path}/train-*.npz", validation_size=2, image_size=8)
  assert len(held.train) == 5 and len(held.eval) == 2 and held.test is held.eval
  assert held.train.x.shape[1:] == (8, 8, 1)


def test_mnist_shortcut_reads_data_dir(tmp_path):
  (tmp_path / "mnist").mkdir()
  write_shards(tmp_path / "mnist", "train", [(3, [0, 9, 5])], shape=(28, 28, 1))
  write_shards(tmp_path / "mnist", "test", [(1, [7])], shape=(28, 28, 1))
  ds = data.load("mnist", data_dir=str(tmp_path))
  assert len(ds.train) == 3 and ds.num_classes == 10


def test_real_mnist_matches_sources_md(shared_data):
  ds = data.load("mnist", data_dir=str(shared_data))
  # Histograms and statistics as published in shared/data/SOURCES.md.
  np.testing.assert_array_equal(np.bincount(ds.train.y),
                                [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
  np.testing.assert_array_equal(np.bincount(ds.test.y),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert ds.train.x.shape == (60000, 28, 28, 1)
  np.testing.assert_allclose(ds.mean, [0.1306605], atol=1e-6)
  np.testing.assert_allclose(ds.std, [0.3081078], atol=1e-6)


def test_real_cifar10_matches_sources_md(shared_data):
  if not (shared_data / "cifar10").is_dir():
    pytest.skip("no CIFAR-10 shards")
  ds = data.load("cifar10", data_dir=str(shared_data))
  assert ds.train.x.shape == (50000, 32, 32, 3) and ds.test.x.shape == (10000, 32, 32, 3)
  # 5,000 train and 1,000 test images per class (SOURCES.md).
  np.testing.assert_array_equal(np.bincount(ds.train.y), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.y), [1000] * 10)
  np.testing.assert_allclose(ds.mean, [0.49140, 0.48216, 0.44653], atol=1e-5)
  np.testing.assert_allclose(ds.std, [0.24703, 0.24349, 0.26159], atol=1e-5)
  np.testing.assert_allclose(ds.test.x.reshape(-1, 3).mean(0) / 255,
                             [0.49421, 0.48513, 0.45041], atol=1e-5)


@pytest.fixture
def mock_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
    yield str(tmp_path)


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_in_memory_through_data_source(mock_tfds, name, shape):
  ds = data.load(f"tfds:{name}", data_dir=mock_tfds)
  assert ds.train.x.shape == (24, *shape) and ds.train.x.dtype == np.uint8
  assert ds.train.y.dtype == np.int32 and ds.num_classes == 10
  assert ds.train.y.min() >= 0 and ds.train.y.max() < 10
  assert ds.name == f"tfds:{name}" and ds.mean.shape == (shape[-1],)


def test_tfds_imagenet_is_streamed_with_known_statistics(mock_tfds):
  ds = data.load("tfds:imagenet2012", data_dir=mock_tfds)
  assert ds.train.streamed and ds.train.x is None and len(ds.train) == 24
  assert ds.num_classes == 1000
  np.testing.assert_allclose(ds.mean, [0.485, 0.456, 0.406])
  image, label = ds.train.example(3)
  assert image.dtype == np.uint8 and image.ndim == 3 and 0 <= label < 1000


def test_segmentation_decoder_maps_trimap_to_classes():
  decode = sources._segmentation_decoder((4, 6), None)
  mask = np.array([[1, 1, 2], [2, 3, 3]], np.uint8)[..., None]   # 2x3 trimap
  image, target = decode({"image": np.full((2, 3, 3), 200, np.uint8),
                          "segmentation_mask": mask})
  assert image.shape == (4, 6, 3) and target.shape == (4, 6)
  # Nearest neighbours: output pixel (i, j) reads source (i // 2, j // 2), minus 1.
  np.testing.assert_array_equal(target, np.kron(mask[..., 0] - 1, np.ones((2, 2), int)))


# ----------------------------------------------------------------------------------
# The schedule
# ----------------------------------------------------------------------------------


def test_permute_is_a_uniform_bijection():
  key = jax.random.key(3)
  full = np.asarray(data.permute(key, jnp.arange(1000), 1000))
  np.testing.assert_array_equal(np.sort(full), np.arange(1000))
  # All 24 orders of 4 items, 4,800 keyed draws: about 200 each. A chi-square with
  # 23 degrees of freedom exceeds 49.7 with probability 0.001.
  draws = jax.jit(jax.vmap(lambda e: data.permute(jax.random.fold_in(key, e),
                                                  jnp.arange(4), 4)))(jnp.arange(4800))
  counts = {p: 0 for p in itertools.permutations(range(4))}
  for p in map(tuple, np.asarray(draws)):
    counts[p] += 1
  chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
  assert chi2 < 49.7


def test_epoch_visits_every_example_once_and_batches_are_deterministic():
  n, batch = 103, 10                       # 10 steps per epoch, 3 examples dropped
  assert data.steps_per_epoch(n, batch) == 10
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  labels = np.arange(n, dtype=np.int32)
  fn = jax.jit(data.make_train_batch_fn(n, batch, augment="none", mean=0.0, std=1.0,
                                        seed=7))
  epoch = [np.asarray(fn(images, labels, s)[1]) for s in range(10)]
  seen = np.concatenate(epoch)
  assert len(np.unique(seen)) == 100                 # no example twice in an epoch
  x, y = fn(images, labels, 4)
  np.testing.assert_array_equal(np.rint(np.asarray(x)[:, 0, 0, 0] * 255), y)  # pairs intact
  np.testing.assert_array_equal(y, epoch[4])         # same seed and step: same batch
  assert not np.array_equal(epoch[4], epoch[5])      # another step: another batch
  next_epoch = np.concatenate([np.asarray(fn(images, labels, s)[1]) for s in range(10, 20)])
  assert len(np.unique(next_epoch)) == 100 and not np.array_equal(seen, next_epoch)
  other = jax.jit(data.make_train_batch_fn(n, batch, augment="none", mean=0.0, std=1.0,
                                           seed=8))
  assert not np.array_equal(np.asarray(other(images, labels, 4)[1]), epoch[4])


def test_cifar_augmentation_is_he_et_al_crop_and_flip():
  images, labels = coordinate_images(1000)
  fn = jax.jit(data.make_train_batch_fn(1000, 1000, augment="cifar", mean=0.0, std=1.0,
                                        seed=0))
  out, out_labels = fn(images, labels, 0)
  out = np.rint(np.asarray(out) * 255).astype(np.int64)
  out_labels = np.asarray(out_labels)
  assert out.shape == (1000, 32, 32, 3)
  np.testing.assert_array_equal(np.sort(out_labels), labels)    # a permutation of all
  flips, offsets = 0, set()
  for image, label in zip(out, out_labels):
    source = images[label].astype(np.int64)
    # Its own colour code wherever it is not padding: the label travelled with it.
    assert set(np.unique(image[..., 2])) <= {0, label % 255 + 1}
    # The centre pixel is inside any shift of at most 4 and names its source pixel:
    # row code 17 + dy, column code 17 + dx unflipped or 16 + dx flipped (it then
    # shows column 31 - 16 + dx). The whole image must then match exactly.
    row, col = image[16, 16, :2]
    candidates = [(row - 17, col - 17, False), (row - 17, col - 16, True)]
    matches = [(dy, dx, f) for dy, dx, f in candidates
               if max(abs(dy), abs(dx)) <= 4
               and np.array_equal(image, shifted(source, dy, dx, f))]
    assert len(matches) == 1, f"example {label}: not a shift within 4 pixels"
    dy, dx, flip = matches[0]
    flips += flip
    offsets.add((dy, dx))
  assert 400 <= flips <= 600          # Binomial(1000, 1/2): sd 16, so 6 sd of room
  assert len(offsets) == 81           # each of the 9 x 9 offsets: P(miss) ~ 81 e^-12.3


def test_shift_augmentation_translates_by_at_most_two_and_never_flips():
  images, labels = coordinate_images(500)
  fn = jax.jit(data.make_train_batch_fn(500, 500, augment="shift", mean=0.0, std=1.0,
                                        seed=0))
  out, out_labels = fn(images, labels, 0)
  out = np.rint(np.asarray(out) * 255).astype(np.int64)
  offsets = set()
  for image, label in zip(out, np.asarray(out_labels)):
    row, col = image[16, 16, :2]
    dy, dx = row - 17, col - 17           # unflipped coordinate codes (see above)
    assert max(abs(dy), abs(dx)) <= 2
    np.testing.assert_array_equal(image, shifted(images[label].astype(np.int64), dy, dx,
                                                 False))
    offsets.add((int(dy), int(dx)))
  assert len(offsets) == 25           # all 5 x 5 offsets: P(miss) ~ 25 (24/25)^500


def test_flip_and_imagenet_augmentations_keep_shape_and_content():
  images, labels = coordinate_images(64, size=16)
  flip = jax.jit(data.make_train_batch_fn(64, 64, augment="flip", mean=0.0, std=1.0, seed=1))
  out, out_labels = flip(images, labels, 0)
  out = np.rint(np.asarray(out) * 255).astype(np.uint8)
  for image, label in zip(out, np.asarray(out_labels)):
    assert (np.array_equal(image, images[label]) or
            np.array_equal(image, images[label][:, ::-1]))
  crop = jax.jit(data.make_train_batch_fn(64, 64, augment="imagenet", mean=0.0, std=1.0,
                                          seed=1, out_size=(8, 8)))
  out, out_labels = crop(images, labels, 0)
  out = np.asarray(out) * 255
  assert out.shape == (64, 8, 8, 3)
  # Interpolation never leaves an image's own constant colour channel.
  np.testing.assert_allclose(out[..., 2], (np.asarray(out_labels) % 255 + 1)[:, None, None]
                             * np.ones((1, 8, 8)), rtol=1e-5)
  # Rows grow down the crop unless it is one pixel high; crops of 8%..100% vary in size.
  spans = out[:, -1, :, 0].mean(1) - out[:, 0, :, 0].mean(1)
  assert np.all(spans >= -1e-3) and spans.std() > 0.5


def test_random_resized_boxes_follow_inception_ranges():
  rows = 2 * augment_lib.CROP_ATTEMPTS + 2
  boxes = jax.jit(lambda key: augment_lib.random_resized_boxes(
      augment_lib.random_words(key, rows, 2000), 100, 100))(jax.random.key(0))
  top, left, h, w = map(np.asarray, boxes)
  area = h * w / 100 ** 2
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 100) & (left + w <= 100))
  # Rounding h and w to whole pixels moves the area by at most ~(h + w) / 2 pixels.
  assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
  assert np.all((w / h >= 0.75 - 0.05) & (w / h <= 4 / 3 + 0.05))
  # A draw (s uniform on [0.08, 1], log r uniform on +-L, L = log 4/3) fits a square
  # iff s <= exp(-|log r|); with t = |log r| uniform on [0, L] the accepted area has
  # E[s] = (int_0^L e^-2t dt - 0.08^2 L) / 2 / (int_0^L e^-t dt - 0.08 L)
  #      = ((1 - 9/16) / 2 - 0.0018412) / 2 / (1/4 - 0.0230146) = 0.4778,
  # not 0.54: large crops of extreme ratio are rejected and redrawn.
  assert abs(area.mean() - 0.4778) < 0.015


def test_segmentation_masks_move_with_their_images():
  images, _ = coordinate_images(16, size=12)
  masks = images[..., 0].astype(np.int32)             # the mask is the row code
  fn = jax.jit(data.make_train_batch_fn(16, 16, augment="cifar", mean=0.0, std=1.0,
                                        seed=2))
  out, out_masks = fn(images, masks, 0)
  out = np.rint(np.asarray(out) * 255).astype(np.int32)
  out_masks = np.asarray(out_masks)
  assert out_masks.shape == (16, 12, 12)
  inside = out[..., 2] > 0
  np.testing.assert_array_equal(out_masks[inside], out[..., 0][inside])
  assert np.all(out_masks[~inside] == augment_lib.MASK_FILL)


# ----------------------------------------------------------------------------------
# Evaluation, devices, streaming
# ----------------------------------------------------------------------------------


def test_eval_batches_cover_split_once_with_masked_tail():
  x = np.arange(23, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  split = data.Split(x, np.arange(23, dtype=np.int32))
  batches = list(data.eval_batches(split, 5, mean=0.0, std=1.0, out_size=(2, 2)))
  assert len(batches) == 5 == data.eval_steps(23, 5)
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  mask = np.concatenate([b[2] for b in batches])
  assert images.shape == (25, 2, 2, 1) and mask.dtype == np.float32
  np.testing.assert_array_equal(labels[mask == 1], np.arange(23))
  np.testing.assert_array_equal(mask, [1] * 23 + [0] * 2)
  np.testing.assert_allclose(images[:23, 0, 0, 0] * 255, np.arange(23), atol=1e-4)
  # The on-device version gives the same batches.
  fn = jax.jit(data.make_eval_batch_fn(23, 5, mean=0.0, std=1.0, out_size=(2, 2)))
  for i, (bx, by, bm) in enumerate(batches):
    dx, dy, dm = fn(x, split.y, i)
    np.testing.assert_allclose(np.asarray(dx), bx, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(dm), bm)
    np.testing.assert_array_equal(np.asarray(dy), by)


def test_put_on_devices_replicates_and_feeds_a_sharded_step():
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  images, labels = coordinate_images(40, size=8)
  x, y = data.put_on_devices(data.Split(images, labels), mesh)
  assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == len(devices)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  fn = jax.jit(data.make_train_batch_fn(40, 16, augment="flip", mean=0.0, std=1.0, seed=0,
                                        sharding=batch_sharding))
  out, _ = fn(x, y, jnp.int32(1))
  assert out.sharding.is_equivalent_to(batch_sharding, out.ndim)
  data.check_batch_size(16, mesh)
  with pytest.raises(ConfigError, match="multiple of 8"):
    data.check_batch_size(12, mesh)


def test_streaming_batches_follow_the_same_schedule(mock_tfds):
  ds = data.load("tfds:imagenet2012", data_dir=mock_tfds)
  labels = np.asarray([ds.train.example(i)[1] for i in range(len(ds.train))])
  stream = data.StreamingBatches(ds.train, 6, "imagenet", mean=ds.mean, std=ds.std,
                                 seed=5, out_size=(16, 16), workers=2)
  images, batch_labels = stream.batch_at(3)
  assert images.shape == (6, 16, 16, 3) and images.dtype == np.float32
  # The examples are those the on-device schedule picks at the same step and seed.
  index = np.asarray(data.batch_indices(5, 3, len(ds.train), 6))
  np.testing.assert_array_equal(batch_labels, labels[index])
  again, _ = stream.batch_at(3)
  np.testing.assert_array_equal(images, again)
  resumed = list(stream.iterate(start=3, steps=2))
  assert len(resumed) == 2
  np.testing.assert_allclose(np.asarray(resumed[0][0]), images)
  np.testing.assert_array_equal(np.asarray(resumed[1][1]), stream.batch_at(4)[1])
  stream.close()
  evals = list(data.eval_batches(ds.eval, 10, mean=ds.mean, std=ds.std, out_size=(16, 16)))
  assert [b[0].shape for b in evals] == [(10, 16, 16, 3)] * 3
  assert np.concatenate([b[2] for b in evals]).sum() == 24


# ----------------------------------------------------------------------------------
# Mistakes
# ----------------------------------------------------------------------------------


def _bad_shards(tmp_path, case):
  """Writes the shards of one mistake; returns the source string."""
  ones = np.ones((2, 4, 4, 1), np.uint8)
  if case == "shapes":
    np.savez(tmp_path / "a-0.npz", x=ones, y=[0, 1])
    np.savez(tmp_path / "a-1.npz", x=np.ones((2, 5, 4, 1), np.uint8), y=[0, 1])
  elif case == "dtype":
    np.savez(tmp_path / "a-0.npz", x=ones.astype(np.float32), y=[0, 1])
  elif case == "keys":
    np.savez(tmp_path / "a-0.npz", images=ones, y=[0, 1])
  return f"npz:{tmp_path}/a-*.npz|{tmp_path}/a-*.npz"


@pytest.mark.parametrize("case, match", [
    ("shapes", "same image shape"), ("dtype", "uint8"), ("keys", "must hold arrays")])
def test_bad_shards_raise_config_error(tmp_path, case, match):
  with pytest.raises(ConfigError, match=match):
    data.load(_bad_shards(tmp_path, case))


@pytest.mark.parametrize("source, kwargs, match", [
    ("imagenet", {}, "Unknown data source"),
    ("npz:/nonexistent/train-*.npz|/nonexistent/test-*.npz", {}, "No files match"),
    ("npz:/nonexistent/train-*.npz", {}, "no test shards"),
    ("mnist", {"data_dir": "/nonexistent"}, "No mnist data at /nonexistent/mnist"),
    ("cifar10", {"data_dir": "/nonexistent"}, "CNN_DATA_DIR"),
    ("digits", {"validation_size": 1.5}, "fraction must lie in"),
    ("digits", {"validation_size": 5000}, "leaves no training"),
    ("digits", {"image_size": (0, 3)}, "image_size"),
    ("digits", {"channels": 2}, "1 or 3"),
    ("digits", {"task": "detection"}, "Unknown data task"),
    ("digits", {"task": "segmentation"}, "only TFDS"),
    ("digits", {"num_classes": 5}, r"labels span \[0, 9\]"),
])
def test_bad_sources_raise_config_error(source, kwargs, match):
  with pytest.raises(ConfigError, match=match):
    data.load(source, **kwargs)


def test_labels_outside_known_class_count(tmp_path):
  (tmp_path / "mnist").mkdir()
  write_shards(tmp_path / "mnist", "train", [(2, [0, 10])], shape=(28, 28, 1))
  write_shards(tmp_path / "mnist", "test", [(1, [3])], shape=(28, 28, 1))
  with pytest.raises(ConfigError, match=r"must lie in \[0, 10\)"):
    data.load("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("source, match", [
    ("tfds:cifar11", "Unknown TFDS dataset 'cifar11'"),
    ("tfds:cifar10", "not prepared at .*tfds build cifar10"),
    ("tfds:imagenet2012", "downloads/manual"),
])
def test_tfds_fails_fast_offline(tmp_path, source, match):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ConfigError, match=match):
    data.load(source, data_dir=str(tmp_path))


@pytest.mark.parametrize("call, match", [
    (lambda: data.make_train_batch_fn(10, 4, augment="mixup", mean=0, std=1, seed=0),
     "Unknown data.augment 'mixup'"),
    (lambda: data.make_train_batch_fn(10, 11, augment="none", mean=0, std=1, seed=0),
     "larger than the 10 training examples"),
    (lambda: data.steps_per_epoch(10, 0), "must be positive"),
    (lambda: jax.jit(data.make_train_batch_fn(4, 2, augment="none", mean=0, std=1, seed=0,
                                              out_size=(9, 9)))(
        np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int32), 0), "cannot be cropped"),
    (lambda: jax.jit(data.make_train_batch_fn(4, 2, augment="none", mean=[0, 0, 0],
                                              std=[1, 1, 1], seed=0))(
        np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int32), 0), "1 channels"),
    (lambda: data.StreamingBatches(data.Split(np.zeros((4, 2, 2, 1), np.uint8),
                                              np.zeros(4, np.int32)), 2, "cutout",
                                   mean=0, std=1), "Unknown data.augment"),
])
def test_bad_pipeline_arguments_raise_config_error(call, match):
  with pytest.raises(ConfigError, match=match):
    call()
